"""Key recovery from the served model file alone: which of the 2N head rows are the real ones?

(The other key-recovery attackers, known plaintext and blind, are in ``known_plaintext.py`` and
``blind.py``; they return the same :class:`RecoveredRows`.)

The attacker holds the protected head (W_en (2N, D), b_en (2N,)) and uses what the paper's
construction leaks: equal biases (b_F = b_o), near-identical sign patterns (sign W_F = sign W_o
wherever |W_o| < max W_o), and the magnitude relation |W_F| = S_a (max W_o − |W_o|), which makes
every fake row far larger than its real partner. Without a pairing, it falls back to row norms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgument


@dataclass
class RecoveredRows:
    real_positions: np.ndarray  # (≤ N,) served positions the attacker believes are real
    oracle: str  # how: "bias-equality", "sign-pattern", "row-norm", "labelled-images", "public-weights", ...
    seconds: float
    queries: int = 0  # images sent to the served model (0: the file alone)
    class_positions: np.ndarray | None = None  # (N,) served position of each real class, -1 unknown; or None

    def recovered_fraction(self, true_real_positions: np.ndarray) -> float:
        """Share of the true real rows the attacker found (chance: 0.5)."""
        return len(np.intersect1d(self.real_positions, true_real_positions)) / len(true_real_positions)

    def mapped_fraction(self, true_real_positions: np.ndarray) -> float:
        """Share of classes whose served position the attacker names exactly (it can then read the real
        top-1 off the served outputs); ``true_real_positions`` (N,) is ``key.permutation[:key.n_real]``.
        0.0 when the attacker names no classes."""
        if self.class_positions is None:
            return 0.0
        return float(np.mean(np.asarray(self.class_positions) == np.asarray(true_real_positions)))


def recover_real_rows(weight: torch.Tensor, bias: torch.Tensor, sign_threshold: float = 0.9) -> RecoveredRows:
    """Guess the N real rows of a (2N, D) head with biases (2N,)."""
    start = time.perf_counter()
    w = weight.detach().double().cpu().reshape(weight.shape[0], -1).numpy()
    b = bias.detach().double().cpu().numpy()
    norms = np.linalg.norm(w, axis=1)
    pairs, oracle = _pairs_by_bias(b), "bias-equality"
    if pairs is None:
        pairs, oracle = _pairs_by_sign(w, sign_threshold), "sign-pattern"
    if pairs is None:
        real = np.argsort(norms, kind="stable")[: w.shape[0] // 2]  # fakes were made larger
        return RecoveredRows(np.sort(real), "row-norm", time.perf_counter() - start)
    real = np.array([i if norms[i] <= norms[j] else j for i, j in pairs])  # the fake partner is larger
    return RecoveredRows(np.sort(real), oracle, time.perf_counter() - start)


ORACLES = ("bias-equality", "sign-pattern", "row-norm")


def recover_with(weight: torch.Tensor, bias: torch.Tensor, oracle: str,
                 sign_threshold: float = 0.9) -> RecoveredRows | None:
    """One oracle of :func:`recover_real_rows` alone (for comparing them): ``bias-equality`` or
    ``sign-pattern`` (pairs, then the smaller row of each), None when it does not pair every row; or
    ``row-norm`` (the N smallest rows). weight (2N, D), bias (2N,)."""
    if oracle not in ORACLES:
        raise InvalidArgument(f"oracle must be one of {', '.join(ORACLES)}, got {oracle!r}")
    start = time.perf_counter()
    w = weight.detach().double().cpu().reshape(weight.shape[0], -1).numpy()
    norms = np.linalg.norm(w, axis=1)
    if oracle == "row-norm":
        return RecoveredRows(np.sort(np.argsort(norms, kind="stable")[: w.shape[0] // 2]), oracle,
                             time.perf_counter() - start)
    pairs = (_pairs_by_bias(bias.detach().double().cpu().numpy()) if oracle == "bias-equality"
             else _pairs_by_sign(w, sign_threshold))
    if pairs is None:
        return None
    real = np.array([i if norms[i] <= norms[j] else j for i, j in pairs])
    return RecoveredRows(np.sort(real), oracle, time.perf_counter() - start)


def file_pairs(weight: torch.Tensor, bias: torch.Tensor, sign_threshold: float = 0.9) -> list[tuple[int, int]] | None:
    """The (real, fake) row pairs the file reveals, order within a pair unknown: by equal biases, else by
    sign patterns; None when neither pairs every row. weight (2N, D), bias (2N,)."""
    w = weight.detach().double().cpu().reshape(weight.shape[0], -1).numpy()
    pairs = _pairs_by_bias(bias.detach().double().cpu().numpy())
    return pairs if pairs is not None else _pairs_by_sign(w, sign_threshold)


def _pairs_by_bias(b: np.ndarray) -> list[tuple[int, int]] | None:
    """Pairs of rows with bit-identical biases, if every bias value occurs exactly twice."""
    _, inverse, counts = np.unique(b, return_inverse=True, return_counts=True)
    if not np.all(counts == 2):
        return None
    order = np.argsort(inverse, kind="stable")
    return [(int(order[k]), int(order[k + 1])) for k in range(0, len(order), 2)]


def _pairs_by_sign(w: np.ndarray, threshold: float) -> list[tuple[int, int]] | None:
    """Mutual best sign-pattern matches with agreement above ``threshold``, if they cover every row."""
    signs = np.sign(w)
    agreement = (signs @ signs.T) / w.shape[1]
    np.fill_diagonal(agreement, -np.inf)
    best = agreement.argmax(axis=1)
    rows = np.arange(len(w))
    mutual = (best[best] == rows) & (agreement[rows, best] > threshold)
    if not mutual.all():
        return None
    return [(int(i), int(best[i])) for i in rows if i < best[i]]
