"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None], mode: int = 0o644) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, mode) as tmp:
        writer(tmp)
