"""Writing a protected model's two halves as one transaction: the cloud folder (:func:`~fakegradient.modelfile.
write_bundle`) and the device's secret. Nothing is overwritten unless asked (then the old secret is kept as
``KEY.old``), everything written is removed again if a step fails, and two writers of one folder exclude each
other (the second fails at once)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import check_writable, drop_copy, keep_copy
from .errors import FakeGradientError
from .modelfile import write_bundle
from .schemes.base import Secret

CLOUD_FILES = ("model.pt", "model.onnx")


@dataclass
class Deployed:
    """What :func:`save_deployment` wrote: the cloud files, the secret's path, the old secret's copy (or None)."""

    cloud: list[Path]
    secret: Path
    backup: Path | None


def save_deployment(out: str | os.PathLike, secret_path: str | os.PathLike, served: nn.Module, secret: Secret, *,
                    input_size: list[int], arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                    weights: str | None = None, extra: dict[str, Any] | None = None, onnx: bool = True,
                    force: bool = False) -> Deployed:
    """Write ``served`` to the cloud folder ``out`` and ``secret`` to ``secret_path`` (0600), or nothing.

    Refuses a secret path inside ``out`` (the cloud's folder), and existing files unless ``force`` (the old
    secret is then kept as ``PATH.old``, ``.old.1``, …; with ``onnx=False`` an old model.onnx is removed, as it
    belongs to the old secret). ``arch``/``arch_kwargs``/``weights``/``extra`` as :func:`write_bundle`.
    """
    out, secret_path = Path(out), Path(secret_path)
    if secret_path.resolve().is_relative_to(out.resolve()):
        raise FakeGradientError(f"the key {secret_path} is inside {out}, which goes to the cloud: keep it elsewhere")
    with _new_folders(secret_path.parent, out), _exclusive(out), contextlib.ExitStack() as undo:
        taken = [p for p in (secret_path, *(out / n for n in CLOUD_FILES)) if p.is_file() or p.is_symlink()]
        if taken and not force:
            raise FakeGradientError(
                f"refusing to overwrite {', '.join(map(str, taken))}: the model deployed with the old key could no "
                "longer be decrypted; choose new key and output paths, or pass --force (the old key is then kept "
                f"as {secret_path}.old)")
        check_writable(secret_path)
        check_writable(out / "model.pt")
        backup = None
        if secret_path in taken:
            backup = keep_copy(secret_path)
            undo.callback(drop_copy, backup, secret_path)  # if anything fails, unless the key was replaced
        written = write_bundle(out, served, secret, input_size=input_size, arch=arch, arch_kwargs=arch_kwargs,
                               weights=weights, extra=extra, onnx=onnx)
        try:
            if not onnx and out / "model.onnx" in taken:  # the old secret's model, not this one's
                (out / "model.onnx").unlink()
            secret.save(secret_path, replace=force)
        except BaseException as exc:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # a filesystem failure after check_writable passed
                raise FakeGradientError(f"cannot write {exc.filename or secret_path}: {exc.strerror or exc}") from None
            raise
        undo.pop_all()  # success: the old secret's copy stays
    return Deployed(written, secret_path, backup)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock`` on the folder itself: no file is left behind);
    another writer holding it is an error at once, not a wait."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the exclusive creation of the key still guards the key
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FakeGradientError(f"another `fakegradient protect` is writing to {folder}: wait for it, or choose "
                                    "another output folder") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _new_folders(*paths: Path) -> Iterator[None]:
    """Create ``paths`` (with parents); if the block fails, remove the folders this made (when empty)."""
    created: list[Path] = []
    try:
        for path in paths:
            created += [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FakeGradientError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        yield
    except BaseException:
        for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
