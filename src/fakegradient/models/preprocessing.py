"""The preprocessing a client applies before sending an image, as plain data (no torch).

The spec is what the cloud folder publishes and the device client reads
(:func:`fakegradient.serving.client.preprocess`): resize the shorter side to ``resize`` (PIL,
``interpolation``), centre-crop ``crop`` x ``crop``, scale to [0, 1], then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgument

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def make_spec(input_size: int, mean: Sequence[float], std: Sequence[float], *, resize: int | None = None,
              interpolation: str = "bilinear") -> dict[str, Any]:
    """A validated spec: (3, input_size, input_size) inputs; ``resize`` defaults to ``input_size`` (the whole
    image, its longer side centre-cropped)."""
    resize = input_size if resize is None else resize
    for name, value in (("input size", input_size), ("resize", resize)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"the {name} must be a positive integer, got {value!r}")
    if resize < input_size:
        raise InvalidArgument(f"resize ({resize}) must be at least the input size ({input_size}): the crop is "
                              "taken from the resized image")
    mean, std = _three("mean", mean), _three("std", std)
    if min(std) <= 0:
        raise InvalidArgument(f"std must be positive, got {std}")
    interpolation = getattr(interpolation, "value", interpolation)  # torchvision's InterpolationMode
    if interpolation not in INTERPOLATIONS:
        raise InvalidArgument(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return {"resize": resize, "crop": input_size, "mean": mean, "std": std, "interpolation": interpolation}


def _three(name: str, values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"{name} needs three finite numbers (R, G, B), got {values}")
    return values
