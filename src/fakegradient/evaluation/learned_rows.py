"""Training the learned file-only attacker (:mod:`fakegradient.attacks.row_classifier`) leave one model out.

The attacker holds public pretrained models (the library's ImageNet models whose weights are on this machine)
and the scheme's public code: it protects every public model except the attacked one under keys of its own,
reads the real rows off its own keys, and fits the row classifier on those heads. It never sees the attacked
model's head unprotected nor its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..attacks.row_classifier import RowClassifier, fit_features, row_features
from ..head import head_parameters, trace_head

TRAINING_MODELS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KEYS = 3  # the attacker's own keys per public model
ROWS_PER_EXAMPLE = 600  # rows of each protected head the classifier is fitted on (bounds the pairwise features)
SEED_OFFSET = 7_000_000  # the attacker's key seeds: SEED_OFFSET + 1000 * seed + 100 * model + key


@dataclass(frozen=True)
class PublicModel:
    """A public model the attacker holds: ``example`` (1, C, H, W) an input of its size; ``weight`` (N, D)
    and ``bias`` (N,) its head."""

    name: str
    model: nn.Module
    example: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


_MODELS: dict[str, PublicModel | None] = {}
_CLASSIFIERS: dict[tuple, tuple[RowClassifier | None, tuple[str, ...]]] = {}


def public_model(name: str) -> PublicModel | None:
    """The library model ``name`` with its pretrained weights, or None when they are not on this machine
    (never downloads); loaded once per process."""
    if name not in _MODELS:
        from .. import models

        weights = models.get_weights(name, "DEFAULT")
        if weights is None or not models.is_local(weights):
            local = [entry for entry in type(weights) if models.is_local(entry)] if weights is not None else []
            weights = local[-1] if local else None
        if weights is None:
            _MODELS[name] = None
        else:
            model = models.load(name, weights=weights).eval()
            crop = weights.transforms().crop_size[0]
            example = torch.zeros(1, 3, crop, crop)
            with torch.no_grad():
                head = trace_head(model, example).head
            weight, bias = head_parameters(model.get_submodule(head))
            _MODELS[name] = PublicModel(name, model, example, weight.detach().cpu(), bias.detach().cpu())
    return _MODELS[name]


def protected_example(public: PublicModel, method: str, seed: int, *, scale: float | None = None,
                      fake_bias: str = "paper") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``public`` protected with ``method`` under the attacker's key ``seed``: (weight (K, D), bias (K,), real
    mask (K,) bool) of the served head; None where no served output is a class (e.g. mixing)."""
    from .. import defaults
    from ..methods import scheme
    from ..protection import protect

    params = {"fake_bias": fake_bias} if "fake_bias" in scheme(method).params() else {}
    served, secret = protect(public.model, method=method, seed=seed, example_input=public.example,
                             scale=defaults.SCALE if scale is None else scale, **params)
    positions = secret.class_positions()
    if positions is None or not secret.served_classes:
        return None
    weight, bias = head_parameters(served.get_submodule(secret.head))
    mask = np.zeros(weight.shape[0], dtype=bool)
    mask[np.asarray(positions)] = True
    return weight.double().cpu().numpy(), bias.double().cpu().numpy(), mask


def same_head(public: PublicModel, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether ``public``'s head is the head (N, D), (N,) of the attacked model (then it is left out)."""
    w, b = weight.detach().cpu(), bias.detach().cpu()
    return (tuple(public.weight.shape) == tuple(w.shape) and tuple(public.bias.shape) == tuple(b.shape)
            and bool(torch.allclose(public.weight.to(w.dtype), w)) and bool(torch.allclose(public.bias.to(b.dtype), b)))


def train_leave_one_out(method: str, held_out: tuple[torch.Tensor, torch.Tensor], *, seed: int,
                        scale: float | None = None, fake_bias: str = "paper", keys: int = KEYS,
                        names: Sequence[str] = TRAINING_MODELS) -> tuple[RowClassifier | None, tuple[str, ...]]:
    """The row classifier for ``method`` fitted on the public models ``names`` other than the one whose head is
    ``held_out`` (weight (N, D), bias (N,)), ``keys`` keys each; and the models it used. (None, ()) when no
    other public model is on this machine or the scheme serves no classes. Memoised per process."""
    used = []
    for index, name in enumerate(names):
        public = public_model(name)
        if public is not None and not same_head(public, *held_out):
            used.append((index, public))
    memo = (method, scale, fake_bias, seed, keys, tuple(public.name for _, public in used))
    if memo not in _CLASSIFIERS:
        rng = np.random.default_rng([seed, 4099])
        features, labels = [], []
        for index, public in used:
            for key in range(keys):
                example = protected_example(public, method, SEED_OFFSET + 1000 * seed + 100 * index + key,
                                            scale=scale, fake_bias=fake_bias)
                if example is None:
                    continue
                weight, bias, mask = example
                rows = np.sort(rng.choice(len(mask), size=min(ROWS_PER_EXAMPLE, len(mask)), replace=False))
                features.append(row_features(weight, bias, rows))
                labels.append(mask[rows])
        classifier = fit_features(features, labels, seed=seed) if features else None
        _CLASSIFIERS[memo] = (classifier, memo[-1] if classifier is not None else ())
    return _CLASSIFIERS[memo]
