"""Blind key recovery: no labels, no public model, no file; only the served outputs on natural images.

Positions are ranked by how often they win (top-1) on the images, ties broken by their highest
per-image standardised output. What the attacker then concludes depends on the scheme's public design
(Kerckhoffs): the paper's fakes are built to win ("fake output" 100 %), so the positions that win are
fake; the hardened and random-weight fakes never win, so those that win are real.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .key_recovery import RecoveredRows
from .known_plaintext import Served, query


def recover_by_winners(served: Served, images: torch.Tensor, fakes_win: bool) -> RecoveredRows:
    """images (B, C, H, W) natural and unlabelled → the N positions believed real: the N least winning if
    ``fakes_win`` (the paper's scheme), else the N most winning."""
    start = time.perf_counter()
    outputs = query(served, images)  # (B, 2N)
    n_real = outputs.shape[1] // 2
    wins = np.bincount(outputs.argmax(1), minlength=outputs.shape[1])
    z = (outputs - outputs.mean(1, keepdims=True)) / np.maximum(outputs.std(1, keepdims=True), 1e-12)
    order = np.lexsort((z.max(0), wins))  # ascending: wins first, then the highest standardised output
    real = order[:n_real] if fakes_win else order[-n_real:]
    return RecoveredRows(np.sort(real), "winners (fakes win)" if fakes_win else "winners (reals win)",
                         time.perf_counter() - start, queries=len(images))
