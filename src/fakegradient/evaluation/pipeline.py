"""Pixel-space pipelines: normalisation inside the attacked module, inputs in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models._api import WeightsEnum
from torchvision.transforms._presets import ImageClassification

from ..schemes.base import Secret


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for pixel images x (B, C, H, W) in [0, 1].

    ``answer``, where set (a callable, not a module), answers every call made without a graph
    (``torch.no_grad()``: queries, judges), e.g. ONNX Runtime running this pipeline's trunk, then its head
    (:mod:`.runtimes`); a call building a graph always runs ``model``. Forward hooks on this module see every
    call; hooks inside ``model`` only the parts the answer runs in torch (its head, for :mod:`.runtimes`)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.answer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.answer is not None and not torch.is_grad_enabled():
            return self.answer(x)
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


def spec_weights(spec: str) -> WeightsEnum:
    """``name[:weights]`` → the weights enum member (``DEFAULT`` when none is named)."""
    from .. import models

    name, _, weights_name = spec.partition(":")
    return models.get_weights(name, weights_name or "DEFAULT")


def load_pipeline(spec: str, device: str = "cpu") -> tuple[Normalized, Callable]:
    """``name[:weights]`` → (pixel-space pipeline in eval mode on ``device``, pixel preprocessing)."""
    from .. import models

    weights = spec_weights(spec)
    pixel, mean, std = pixel_preprocessing(weights)
    return Normalized(models.load(spec.partition(":")[0], weights=weights), mean, std).to(device).eval(), pixel


def protected_pipeline(original: Normalized, method: str, *, scale: float, seed: int,
                       probe: torch.Tensor, bias: str = "paper") -> tuple[Normalized, Secret]:
    """The served pipeline for the scheme ``method``: ``original``'s classifier protected, same normalisation,
    and what the device holds. ``probe`` is one pixel image (1, C, H, W) the head is traced on.
    ``bias="official"`` gives the schemes with b_F = b_o the released code's fake bias instead; ``scale`` and
    ``bias`` reach the schemes that take them."""
    from ..methods import scheme
    from ..protection import protect

    accepted = scheme(method).params()
    params = {"fake_bias": bias} if "fake_bias" in accepted else {}
    protected, secret = protect(original.model, method=method, scale=scale, seed=seed,
                                example_input=(probe - original.mean) / original.std, **params)
    served = Normalized(protected, original.mean.flatten().tolist(), original.std.flatten().tolist())
    return served.to(probe.device).eval(), secret
