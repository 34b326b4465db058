"""Labelled images that exist offline: the 20 ImageNet validation photos in foolbox's wheel,
or any ImageFolder (ImageNet val layout)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from .errors import FakeGradientError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None  # class index, None when unknown


def foolbox_imagenet() -> list[Sample]:
    """The 20 ImageNet validation photos shipped in foolbox (``imagenet_NN_<label>.jpg``)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise FakeGradientError("foolbox is not installed (pip install foolbox): it ships the sample photos")
    folder = Path(spec.origin).parent / "data"
    pattern = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")
    found = sorted(
        (int(m.group(1)), Sample(p, int(m.group(2))))
        for p in folder.iterdir()
        if (m := pattern.match(p.name))
    )
    if not found:
        raise FakeGradientError(f"no imagenet_*.jpg photos in {folder}")
    return [sample for _, sample in found]


def image_folder(root: str | Path, limit: int | None = None) -> list[Sample]:
    """An ImageFolder: ``root/<class>/<image>``; classes sorted by name are labels 0..K-1."""
    root = Path(root)
    if not root.is_dir():
        raise FakeGradientError(f"data folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise FakeGradientError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    samples = [
        Sample(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise FakeGradientError(f"{root} holds no images")
    return samples[:limit] if limit else samples


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, with a clear error for a missing or non-image file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FakeGradientError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise FakeGradientError(f"{path} is not a readable image ({exc.__class__.__name__})") from None


def load_batch(paths: list[Path], transform) -> torch.Tensor:
    """Images → (B, C, H, W) float tensor through ``transform`` (e.g. ``weights.transforms()``)."""
    import torch

    return torch.stack([transform(open_rgb(p)) for p in paths])
