"""A device secret's file on disk: read only if it is a regular file of bounded size, written atomically 0600
and never over an existing file unless asked, with a warning when others may read it (stdlib only)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from .atomic import write_bytes_atomic, write_new
from .errors import KeyFileError


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[BinaryIO | None]:
    """``path`` opened for reading if it is a regular file, else None: a folder, a device or a pipe is not
    read (no blocking on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        yield None
        return
    with os.fdopen(fd, "rb") as handle:
        yield handle


def write_secret(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> None:
    """Write a device secret (key, device head) atomically, 0600; an existing file is replaced only if ``replace``."""
    if replace:
        write_bytes_atomic(path, data, mode=0o600)
        return
    try:
        write_new(path, data, mode=0o600)
    except FileExistsError:
        raise KeyFileError(f"refusing to overwrite {path}: choose a new path") from None


def read_private_file(path: str | os.PathLike, limit: int, what: str) -> tuple[bytes, int]:
    """(contents, st_mode) of the device's secret file ``path`` (a key or a device head, named ``what``): a
    regular file of at most ``limit`` bytes, else a one-line :class:`KeyFileError`."""
    try:
        with open_regular(path) as handle:
            if handle is None:
                raise KeyFileError(f"{what} {path} is not a regular file")
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(limit + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"
        raise KeyFileError(f"{what} {path} is larger than {size}: not a {what}")
    return data, mode


def warn_if_shared(log: logging.Logger, path: str | os.PathLike, mode: int, what: str, exposes: str) -> None:
    """On POSIX, warn when group or others may read or write a secret file (as ssh does for private keys);
    ``exposes``: what a reader of it can do."""
    if os.name == "posix" and mode & 0o066:
        log.warning("%s %s is readable or writable by group or others (mode %04o): whoever reads it %s; "
                    "run chmod 600 %s", what, path, stat.S_IMODE(mode), exposes, path)
