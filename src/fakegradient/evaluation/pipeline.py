"""Pixel-space pipelines: normalisation inside the attacked module, inputs in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models._api import WeightsEnum
from torchvision.transforms._presets import ImageClassification


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for pixel images x (B, C, H, W) in [0, 1]."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def pixel_preprocessing(weights: WeightsEnum) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """torchvision's preset for ``weights`` without its normalisation, plus its mean and std."""
    preset = weights.transforms()
    pixel = ImageClassification(
        crop_size=preset.crop_size[0],
        resize_size=preset.resize_size[0],
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation=preset.interpolation,
        antialias=preset.antialias,
    )
    return pixel, tuple(preset.mean), tuple(preset.std)
