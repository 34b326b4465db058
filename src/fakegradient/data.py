"""Labelled images that exist offline: the 20 ImageNet validation photos in foolbox's wheel,
or any ImageFolder (ImageNet val layout)."""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ._lazy import missing_message
from .errors import FakeGradientError
from .secret_files import open_regular

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_ASPECT_RATIO = 20  # longer side / shorter side: resizing the short side of a thinner image explodes
# decoded-pixel budget, checked from the header: 50 megapixels (a 48-50 MP phone or camera photo passes) decode
# to at most ~200 MB (Pillow keeps 4 bytes a pixel); a 75-byte PNG declaring 9000x9000 (81 MP) is refused
MAX_PIXELS = 50_000_000
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # 16-bit grey (Pillow reads 16-bit RGB(A) as 8; I:
# a 16-bit PGM, as 32-bit samples are refused)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None  # class index, None when unknown


def foolbox_imagenet() -> list[Sample]:
    """The 20 ImageNet validation photos shipped in foolbox (``imagenet_NN_<label>.jpg``)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise FakeGradientError(missing_message("the 20 ImageNet sample photos (shipped in foolbox's wheel)",
                                                "eval"))
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
    """Open an image as upright 8-bit RGB: EXIF orientation applied, 16-bit samples scaled, not clipped,
    transparency composited on black (see :func:`on_black`).

    Only a regular file is read (a FIFO or a device never blocks). The size is checked from the header, before
    decoding: more than :data:`MAX_PIXELS` pixels (a decompression bomb: the decoded budget) or sides further
    apart than ``MAX_ASPECT_RATIO`` is refused, and so are 32-bit float or integer samples (TIFF modes F and I),
    which have no standard 8-bit scale. Every failure is a one-line :class:`FakeGradientError` naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path) as handle:
                if handle is None:
                    raise FakeGradientError(f"{path} is not a regular file (a folder, a pipe or a device)")
                image = Image.open(handle)  # not closed once loaded: closing frees the pixels an RGB image returns
                try:
                    _check_size(path, *image.size)
                    _check_samples(path, image)
                    image.load()
                except BaseException:
                    image.close()
                    raise
        ImageOps.exif_transpose(image, in_place=True)  # no copy of an upright image
        if image.mode in SIXTEEN_BIT_MODES:
            return Image.fromarray((np.asarray(image).clip(0, 65535) >> 8).astype(np.uint8)).convert("RGB")
        return on_black(image)
    except FileNotFoundError:
        raise FakeGradientError(f"no such image: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FakeGradientError(f"{path} is refused: {exc}") from None
    except FakeGradientError:
        raise
    except Exception as exc:
        raise FakeGradientError(f"{path} is not a readable image ({exc.__class__.__name__})") from None


def on_black(image: Image.Image) -> Image.Image:
    """8-bit RGB, a transparent image composited on black: each channel becomes round(c * alpha / 255), the rule
    the device page applies too (a browser canvas keeps colours premultiplied, zeroing them under alpha 0)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")  # (convert would copy an RGB image)
    rgba = image.convert("RGBA")
    black = Image.new("RGB", rgba.size)
    black.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))  # Pillow's exact round(c * a / 255)
    return black


def _check_size(path: str | Path, width: int, height: int) -> None:
    """Refuse what the decoder or the resize would make huge, from the header's size alone."""
    if width * height > MAX_PIXELS:
        raise FakeGradientError(f"{path} is refused: {width}x{height} pixels exceed the limit of {MAX_PIXELS}")
    if max(width, height) > MAX_ASPECT_RATIO * max(min(width, height), 1):
        raise FakeGradientError(f"{path} is refused: {width}x{height} is more elongated than "
                                f"1:{MAX_ASPECT_RATIO}")


def _check_samples(path: str | Path, image: Image.Image) -> None:
    """Refuse 32-bit float or integer samples (TIFF's modes F and I), from the header: no scale to 8 bits is
    standard (0..1, 0..255 and 0..65535 are all in use), so any guess would misread some files silently."""
    rawmodes = [t.args if isinstance(t.args, str) else t.args[0] for t in image.tile if t.args]
    if image.mode == "F" or (image.mode == "I" and any(r == "I" or r.startswith(("I;32", "F")) for r in rawmodes)):
        kind = "floating-point" if image.mode == "F" or any(r.startswith("F") for r in rawmodes) else "integer"
        raise FakeGradientError(f"{path} is refused: it holds 32-bit {kind} samples (mode {image.mode}), which have "
                                "no standard 8-bit scale; save it as an 8- or 16-bit image")


def load_batch(paths: list[Path], transform) -> torch.Tensor:
    """Images → (B, C, H, W) float tensor through ``transform`` (e.g. ``weights.transforms()``)."""
    import torch

    return torch.stack([transform(open_rgb(p)) for p in paths])


# natural photographs bundled in installed packages: (package, path inside it, what it shows)
BUNDLED_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "portrait photograph of Grace Hopper"),
    ("sklearn", "datasets/images/china.jpg", "photograph of a Chinese temple (scikit-learn sample image)"),
    ("sklearn", "datasets/images/flower.jpg", "photograph of a flower (scikit-learn sample image)"),
    # scikit-image's colour photographs (its others are grey, synthetic, medical or microscopy images, and
    # motorcycle_right.png is the stereo twin of motorcycle_left.png)
    ("skimage", "data/astronaut.png", "portrait photograph of the astronaut Eileen Collins (scikit-image)"),
    ("skimage", "data/chelsea.png", "photograph of a cat, Chelsea (scikit-image)"),
    ("skimage", "data/coffee.png", "photograph of a cup of coffee (scikit-image)"),
    ("skimage", "data/motorcycle_left.png", "photograph of a motorcycle in a garage (scikit-image)"),
    ("skimage", "data/rocket.jpg", "photograph of a rocket on its launch pad at night (scikit-image)"),
    ("skimage", "data/hubble_deep_field.jpg", "the Hubble Deep Field, a telescope photograph (scikit-image)"),
)


def bundled_photos() -> list[Sample]:
    """The distinct natural photographs in :data:`BUNDLED_PHOTOS`, unlabelled (``label=None``).

    Raises :class:`FakeGradientError` when a package is missing, so that n never changes silently."""
    samples = []
    for package, relative, _ in BUNDLED_PHOTOS:
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / relative if spec is not None and spec.origin else None
        if path is None or not path.is_file():
            raise FakeGradientError(f"the photo {relative} of {package} is missing: install {package}")
        samples.append(Sample(path, None))
    return samples
