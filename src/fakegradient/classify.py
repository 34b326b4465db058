"""Local classification through a protected model and the key (the device + cloud on one machine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .key import Key, softmax

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Prediction:
    """One image: encrypted top-1 position (what the cloud sees) and decrypted top-k (what the device sees)."""

    encrypted_top1: int
    encrypted_top1_is_fake: bool
    topk: list[tuple[int, float]]  # (class index, softmax probability) over the real logits


def predictions(key: Key, encrypted: np.ndarray, k: int = 5) -> list[Prediction]:
    """Encrypted outputs (B, 2N) → what the cloud saw and the decrypted top-k, per image (numpy only)."""
    probs = softmax(key.decrypt(encrypted))
    top1 = encrypted.argmax(axis=1)
    fake = key.is_fake(top1)
    order = np.argsort(-probs, axis=1)[:, :k]
    return [
        Prediction(int(top1[i]), bool(fake[i]), [(int(c), float(probs[i, c])) for c in order[i]])
        for i in range(len(order))
    ]


def classify_batch(model: nn.Module, key: Key, images: torch.Tensor, k: int = 5) -> list[Prediction]:
    """images (B, C, H, W) normalised → predictions through ``model`` (2N outputs) and ``key``."""
    import torch

    with torch.no_grad():
        encrypted = model(images).cpu().numpy()
    return predictions(key, encrypted, k)
