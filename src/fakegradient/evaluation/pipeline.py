"""Pixel-space pipelines: normalisation inside the attacked module, inputs in [0, 1]."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models._api import WeightsEnum
from torchvision.transforms._presets import ImageClassification

from ..key import Key


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
                       probe: torch.Tensor, bias: str = "paper") -> tuple[Normalized, Key]:
    """The served pipeline for ``method``: ``original``'s classifier protected, same normalisation.

    ``probe`` is one pixel image (1, C, H, W) the head is traced on. ``bias="official"`` gives the
    methods with b_F = b_o the released code's fake bias instead (:func:`with_official_bias`).
    """
    from ..methods import METHODS
    from ..protection import protect

    protected, key = protect(original.model, method=method, scale=scale, seed=seed,
                             example_input=(probe - original.mean) / original.std)
    if bias == "official" and METHODS[method].copies_bias:
        protected, key = with_official_bias(protected, key, scale)
    served = Normalized(protected, original.mean.flatten().tolist(), original.std.flatten().tolist())
    return served.to(probe.device).eval(), key


@torch.no_grad()
def with_official_bias(protected: nn.Module, key: Key, scale: float) -> tuple[nn.Module, Key]:
    """``protected`` (modified in place) with its fake biases set to the released code's
    ``S_a (max b_o - |b_o|) sign(b_o)``, and its key with the new head's fingerprint.

    ``key.permutation[i]`` is the served position of plain output i (real 0..N-1, fake N..2N-1).
    The real outputs are untouched, so decryption is unchanged."""
    from ..core.fake_rows import official_fake_bias
    from ..core.fingerprint import head_fingerprint
    from ..head import build_head, head_parameters, replace_module

    layer = protected.get_submodule(key.head)
    weight, served_bias = head_parameters(layer)
    positions = torch.as_tensor(key.permutation, device=served_bias.device)
    new_bias = served_bias.clone()
    new_bias[positions[key.n_real:]] = official_fake_bias(served_bias[positions[: key.n_real]], scale)
    replace_module(protected, key.head, build_head(layer, weight, new_bias))
    return protected, dataclasses.replace(key, model_fingerprint=head_fingerprint(weight, new_bias))
