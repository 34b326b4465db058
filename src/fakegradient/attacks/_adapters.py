"""Glue shared by the library adapters (foolbox 3, ART): validation, seeding, query counting, results.

Nothing here is an attack. Every adapter takes a model mapping pixel images (B, C, H, W) in [0, 1]
to logits (B, K) and returns an :class:`~fakegradient.attacks.base.AttackResult`.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from .base import AttackResult

Judge = Callable[[torch.Tensor], torch.Tensor]  # pixel images (B, C, H, W) → logits (B, K)


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    """Raise :class:`InvalidArgument` unless ``value`` is an int (not bool) >= ``minimum`` (ART's ``_check_params``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{owner} {name} must be an integer >= {minimum}, got {value!r}")


def check_bool(owner: str, name: str, value: Any) -> None:
    """Raise :class:`InvalidArgument` unless ``value`` is True or False (not 0, 1 or a string)."""
    if value is not True and value is not False:
        raise InvalidArgument(f"{owner} {name} must be True or False, got {value!r}")


def check_float(owner: str, name: str, value: Any, *, positive: bool = True, optional: bool = False) -> None:
    """Raise :class:`InvalidArgument` unless ``value`` is a finite number, > 0 if ``positive`` (>= 0 otherwise)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InvalidArgument(f"{owner} {name} must be a finite number {'> 0' if positive else '>= 0'}, "
                              f"got {value!r}")


@torch.no_grad()
def top1(model: Judge, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B,) top-1 of ``model``."""
    return model(images).argmax(dim=1)


def finish(attacked: Judge, judge: Judge | None, images: torch.Tensor, adversarial: torch.Tensor,
           iterations: torch.Tensor, queries: torch.Tensor | None = None, eps: float | None = None) -> AttackResult:
    """The per-sample result. ``success`` is judged by ``judge`` (default: the attacked model), e.g. the
    decrypted real top-1 when the served model was attacked. With ``eps``, samples whose ‖r‖₂ exceeds it
    (plus 1e-5 for float rounding) fall back to the clean image: failures at that budget."""
    adversarial = adversarial.detach().to(images.device, images.dtype)
    if eps is not None:
        shape = (-1, *[1] * (images.dim() - 1))
        r = adversarial - images
        norm = r.flatten(1).norm(dim=1)
        # float32 rounding: ART's L2 Square lands up to ~1e-5 relative outside its ball (seen at eps 5 on
        # 224x224 images); project such samples back onto the ball, with a margin of 1e-6 relative
        rounding = (norm > eps) & (norm <= eps * (1 + 1e-3))
        scale = torch.where(rounding, eps * (1 - 1e-6) / norm.clamp_min(1e-12), torch.ones_like(norm))
        adversarial = (images + r * scale.view(shape)).clamp(0, 1)
        over = (adversarial - images).flatten(1).norm(dim=1) > eps  # beyond rounding: a failure at eps
        adversarial = torch.where(over.view(shape), images, adversarial)
    judge = attacked if judge is None else judge
    clean, adv = top1(judge, images), top1(judge, adversarial)
    l2 = (adversarial - images).flatten(1).norm(dim=1)
    return AttackResult(adversarial, adv != clean, iterations, clean, adv, queries=queries, l2=l2)


@contextlib.contextmanager
def seeded(generator: np.random.Generator) -> Iterator[int]:
    """Seed numpy's, Python's and torch's global generators (which ART and foolbox draw from) with a seed
    drawn from ``generator``; restore their states afterwards. Yields the seed (to record)."""
    seed = int(generator.integers(2**31 - 1))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield seed
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


class QueryCounter(nn.Module):
    """Wraps a model and counts the *distinct* images it is asked about (B, C, H, W) → logits.

    An image already asked is answered from a cache and not counted: an attacker would not resend it
    (ART's Square attack, for one, evaluates the same image up to three times per iteration).
    Outputs are detached: for black-box (query) attacks only. The model is put in eval mode once and
    held outside the module tree: ART's ``predict`` sets the mode of its model on every call, a walk
    over every submodule (about 1 ms for MobileNetV2, against a 25-95 ms query) that changes nothing.
    """

    def __init__(self, model: Judge):
        super().__init__()
        if isinstance(model, nn.Module):
            model.eval()
        self._wrapped = (model,)  # a tuple: not a registered submodule
        self.cache: dict[bytes, torch.Tensor] = {}
        self.queries = 0

    @property
    def model(self) -> Judge:
        return self._wrapped[0]

    @staticmethod
    def digest(row: torch.Tensor) -> bytes:
        """The cache key of one query row: the 128-bit XXH3 of its float32 bytes (hashed in place where it is
        contiguous on the CPU; much cheaper than BLAKE2b, and no adversary chooses these bytes to collide)."""
        import xxhash  # the eval extra's, as ART and foolbox are

        array = np.ascontiguousarray(row.detach().cpu().numpy())
        return xxhash.xxh3_128_digest(memoryview(array).cast("B"))

    def reset(self) -> None:
        """Forget every query asked so far (e.g. the probe of :func:`art_classifier`, which would otherwise
        answer the first image's clean query for free): the next ones are counted from 0."""
        self.cache.clear()
        self.queries = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # ART's HopSkipJump sends float64
        keys = [self.digest(row) for row in x]
        first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self.cache}  # new, once each
        if first:
            with torch.no_grad():
                out = self.model(x[list(first.values())])
            self.cache.update({k: row.detach() for k, row in zip(first, out)})
            self.queries += len(first)
        return torch.stack([self.cache[k] for k in keys])


def art_classifier(model: nn.Module, images: torch.Tensor, loss: nn.Module | None = None,
                   preprocessing: tuple[float, float] | None = None) -> Any:
    """An ART ``PyTorchClassifier`` over ``model`` for images like ``images`` (B, C, H, W) in [0, 1]. No
    ``preprocessing`` by default: ART's own default, (x − 0) / 1, is exact, so skipping it changes no value, and it
    copied every query batch (tests/test_attacks_library.py)."""
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        n_outputs = model(images[:1]).shape[1]
    return PyTorchClassifier(model=model, loss=loss or nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                             nb_classes=n_outputs, clip_values=(0.0, 1.0), preprocessing=preprocessing,
                             device_type="gpu" if images.is_cuda else "cpu")


def to_tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(like.device, like.dtype)
