"""Classification through a protected model and the key: the numpy core shared by the local CLI path and
the device client, which streams per-image results and reports each failure without stopping.

The key is any scheme's :class:`~fakegradient.schemes.Secret` (a Fake Gradient key: the served outputs are
(B, 2N), real and fake logits permuted; a device head: the features (B, D)); each turns the served outputs into
the real logits with ``decrypt``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import FakeGradientError
from .key import softmax
from .schemes.base import Secret

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Prediction:
    """One image: encrypted top-1 position (what the cloud sees) and decrypted top-k (what the device sees).
    Where the cloud serves no classes (features), ``encrypted_top1`` is None, not fake."""

    encrypted_top1: int | None
    encrypted_top1_is_fake: bool
    topk: list[tuple[int, float]]  # (class index, softmax probability) over the real logits


@dataclass
class Classification:
    image: str
    server_top1: int | None  # the position the cloud saw win (a fake output on a protected model); None: features
    server_top1_is_fake: bool
    topk: list[tuple[int, str, float]]  # (class, label, probability)


@dataclass
class Failure:
    """An image that could not be classified: ``error`` is one line naming the file."""

    image: str
    error: str


class Unreachable(FakeGradientError):
    """The model cannot be reached any more: no further image can be classified."""


def predictions(key: Secret, encrypted: np.ndarray, k: int = 5) -> list[Prediction]:
    """Served outputs (B, key.n_outputs) → what the cloud saw and the real top-k, per image (numpy only)."""
    probs = softmax(key.decrypt(encrypted))
    order = np.argsort(-probs, axis=1)[:, :k]
    if not key.served_classes:  # the cloud saw features: no position won
        seen: list[tuple[int | None, bool]] = [(None, False)] * len(order)
    else:
        top1 = encrypted.argmax(axis=1)
        seen = list(zip(top1.tolist(), key.is_fake(top1).tolist()))
    return [Prediction(position, bool(fake), [(int(c), float(probs[i, c])) for c in order[i]])
            for i, (position, fake) in enumerate(seen)]


def label(categories: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``, or ``class <index>`` when unknown."""
    return str(categories[index]) if categories and index < len(categories) else f"class {index}"


def stream(paths: Sequence[str | Path], load: Callable[[str | Path], Any], infer: Callable[[list[Any]], np.ndarray],
           key: Secret, *, k: int = 5, batch_size: int = 16,
           categories: Sequence[str] | None = None) -> Iterator[Classification | Failure]:
    """Classify ``paths`` in batches, yielding each image's result as soon as its batch is back.

    ``load(path)`` → one input, ``infer(inputs)`` → served outputs (B, key.n_outputs); a FakeGradientError from
    either, or outputs of another shape or not finite, is a :class:`Failure` of the image(s) concerned and
    the rest goes on. :class:`Unreachable` from ``infer`` ends the stream with the count of images left.
    Class names: the secret's own (they travel with it), else ``categories``."""
    categories = list(key.labels) if key.labels else categories
    if batch_size < 1:
        raise FakeGradientError(f"batch size must be >= 1, got {batch_size}")
    pending: list[tuple[str | Path, Any]] = []
    for index, path in enumerate(paths):
        try:
            pending.append((path, load(path)))
        except FakeGradientError as exc:
            yield Failure(Path(path).name, str(exc))
        if pending and (len(pending) == batch_size or index == len(paths) - 1):
            try:
                yield from _batch(pending, infer, key, k, categories)
            except Unreachable as exc:
                left = len(pending) + len(paths) - index - 1
                raise Unreachable(f"{exc} ({left} of {len(paths)} images not classified)") from None
            pending = []


def _batch(pending: list[tuple[str | Path, Any]], infer: Callable[[list[Any]], np.ndarray], key: Secret,
           k: int, categories: Sequence[str] | None) -> Iterator[Classification | Failure]:
    try:
        encrypted = np.asarray(infer([x for _, x in pending]))
        if encrypted.shape != (len(pending), key.n_outputs):
            raise FakeGradientError(f"expected outputs of shape ({len(pending)}, {key.n_outputs}), "
                                    f"got {encrypted.shape}")
        if not np.isfinite(encrypted).all():
            raise FakeGradientError("the outputs are not all finite")
    except Unreachable:
        raise
    except FakeGradientError as exc:
        for path, _ in pending:
            yield Failure(Path(path).name, f"{path}: {exc}")
        return
    for (path, _), pred in zip(pending, predictions(key, encrypted, k), strict=True):
        yield Classification(Path(path).name, pred.encrypted_top1, pred.encrypted_top1_is_fake,
                             [(c, label(categories, c), p) for c, p in pred.topk])


def model_outputs(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """images (B, C, H, W) → the model's outputs as a numpy array, without gradients."""
    import torch

    with torch.no_grad():
        return model(images).cpu().numpy()

