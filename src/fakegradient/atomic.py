"""Atomic file writes: a temporary file in the target folder, fsync, ``os.replace``, fsync of the folder."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FakeGradientError


def _temp_beside(target: Path) -> Path:
    folder = target.parent
    if not folder.is_dir():
        raise FakeGradientError(f"cannot write {target}: folder {folder} does not exist")
    if target.is_dir():
        raise FakeGradientError(f"cannot write {target}: it is a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise FakeGradientError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    return Path(name)


def check_writable(path: str | os.PathLike) -> None:
    """Raise a clear error now if ``path`` could not be written later."""
    _temp_beside(Path(path)).unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` with ``mode``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = _temp_beside(target)
    try:
        os.chmod(tmp, mode)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or file creation in ``folder`` durable (POSIX; a no-op where folders cannot be synced)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder one may write but not read: best effort
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def keep_copy(path: str | os.PathLike) -> Path:
    """Copy ``path`` to the first free name of ``PATH.old``, ``PATH.old.1``, ``PATH.old.2``, … (0600, synced;
    an existing file is never replaced) and return that name."""
    source = Path(path)
    for n in itertools.count():
        backup = source.with_name(source.name + (".old" if n == 0 else f".old.{n}"))
        try:
            with open(source, "rb") as src:
                _create_exclusive(backup, lambda out: shutil.copyfileobj(src, out), 0o600)
            try:
                fsync_dir(backup.parent)
            except OSError:
                backup.unlink(missing_ok=True)
                raise
        except FileExistsError:
            continue
        except OSError as exc:
            raise FakeGradientError(f"cannot keep a copy of {source}: {exc.strerror or exc}") from None
        return backup
    raise AssertionError("unreachable")


def drop_copy(backup: Path, original: str | os.PathLike) -> None:
    """Undo :func:`keep_copy`: remove ``backup`` unless ``original`` has changed since (then it is the only copy)."""
    with contextlib.suppress(OSError):
        filecmp.clear_cache()  # its cache is keyed on size and mtime, which a replaced key may share
        if filecmp.cmp(backup, original, shallow=False):
            backup.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def write_new(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a *new* file ``path`` atomically: a synced temporary file hard-linked to the name, which
    fails if the name exists (``FileExistsError``); where hard links are not supported, an exclusive create."""
    target = Path(path)
    if target.is_dir():
        raise FakeGradientError(f"cannot write {target}: it is a folder")
    if target.exists() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    tmp = _temp_beside(target)
    try:
        os.chmod(tmp, mode)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system
            _create_exclusive(target, lambda handle: handle.write(data), mode)
        fsync_dir(target.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise FakeGradientError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(target: Path, fill: Callable[[BinaryIO], Any], mode: int) -> None:
    """Create ``target`` (``FileExistsError`` if it exists), let ``fill`` write it, sync it; on any failure
    the partial file is removed."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def write_with(path: str | os.PathLike, writer: Callable[[Path], None], mode: int = 0o644) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        writer(tmp)
