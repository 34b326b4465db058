"""A learned file-only attacker: which of the K served head rows are real, from per-row statistics that a
classifier learnt on other protected heads.

The scheme is public, so the attacker protects public models itself under keys of its own and learns what
tells a real row from a fake one. Every feature is free of the feature dimension D and of K (ratios to the
head's median, within-head ranks, shares of D), so a classifier fitted on some models' heads applies to
another model's head. Rows are the head's output rows: ``weight`` (K, D), ``bias`` (K,).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgument

_TINY = 1e-30
SUBSPACES = (1, 8, 32)  # top-k right singular subspaces whose share of each row's energy is a feature
# statistics of each row alone (and of the head's columns), each also as its rank among the K rows
_SINGLE = ("norm_rel", "mean_over_rms", "std_over_rms", "skew", "excess_kurtosis", "frac_positive",
           "max_over_rms", "abs_profile_corr", "signed_profile_corr", "centroid_cos",
           *(f"energy_top{k}" for k in SUBSPACES), "bias_z")
# statistics of a row against the other rows
_PAIRWISE = ("bias_shared", "norm_gap_log10", "best_abs_cos", "best_cos_signed", "second_abs_cos", "cos_log_norm_ratio",
             "best_sign_agreement", "sign_log_norm_ratio", "sign_bias_diff", "sign_partner_cos")
FEATURE_NAMES: tuple[str, ...] = (*_SINGLE, *(f"{name}_rank" for name in _SINGLE), *_PAIRWISE)


def _as_head(weight: Any, bias: Any) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(weight, dtype=np.float64)
    w = w.reshape(len(w), -1) if w.ndim else w
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 1 or b.shape[0] != w.shape[0]:
        raise InvalidArgument(f"a head needs weight (K, D) with K >= 2 and bias (K,), got {w.shape} and {b.shape}")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise InvalidArgument("the head's weight and bias must be finite")
    return w, b


def _ranks(values: np.ndarray) -> np.ndarray:
    """(K,) → (K,) rank percentiles in (0, 1), ties averaged (a feature's place within its head)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    summed = np.bincount(inverse, weights=ranks)
    return (summed[inverse] / counts[inverse] + 0.5) / len(values)


def _row_corr(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """(K, D), (D,) → (K,) Pearson correlation of each row with ``vector`` (0 where either is constant)."""
    rows = matrix - matrix.mean(1, keepdims=True)
    v = vector - vector.mean()
    denominator = np.linalg.norm(rows, axis=1) * np.linalg.norm(v)
    return np.where(denominator > _TINY, rows @ v / np.maximum(denominator, _TINY), 0.0)


def _subspace_energy(w: np.ndarray, norms2: np.ndarray) -> np.ndarray:
    """(K, D) → (K, len(SUBSPACES)): the share of each row's squared norm in the span of the head's top-k
    right singular vectors (uncentred), k in :data:`SUBSPACES` (capped at a quarter of min(K, D): a subspace
    spanning every row would give each row 1)."""
    from scipy.linalg import eigh

    cap = max(1, min(w.shape) // 4)
    k_max = min(max(SUBSPACES), cap)
    rows_gram = w.shape[0] <= w.shape[1]
    gram = w @ w.T if rows_gram else w.T @ w
    values, vectors = eigh(gram, subset_by_index=[len(gram) - k_max, len(gram) - 1])  # the top k_max, ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    if rows_gram:  # U Λ Uᵀ: row i's projection energy Σ_j U_ij² λ_j
        energy = vectors ** 2 * np.maximum(values, 0.0)
    else:  # V: row i's energy Σ_j (w_i · v_j)²
        energy = (w @ vectors) ** 2
    cumulative = np.cumsum(energy, axis=1)
    return np.stack([cumulative[:, min(k, k_max) - 1] for k in SUBSPACES], axis=1) / np.maximum(norms2, _TINY)[:, None]


def _norm_gap(norms: np.ndarray) -> np.ndarray:
    """(K,) → (K,) log10 of the relative gap to the nearest other row norm (−12 for a twin to the last bit)."""
    order = np.argsort(norms, kind="stable")
    ordered = norms[order]
    gaps = np.diff(ordered)
    nearest = np.minimum(np.concatenate([[np.inf], gaps]), np.concatenate([gaps, [np.inf]]))
    out = np.empty(len(norms))
    out[order] = np.log10(np.maximum(nearest / np.maximum(ordered, _TINY), 1e-12))
    return out


def _best_two(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, K) with -inf on each row's own column → (r,) argmax, max and second max."""
    best = scores.argmax(1)
    top = scores[np.arange(len(scores)), best]
    second = np.partition(scores, -2, axis=1)[:, -2] if scores.shape[1] > 2 else np.full(len(scores), np.nan)
    return best, top, np.nan_to_num(second, neginf=0.0)


def row_features(weight: Any, bias: Any, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Per-row statistics of a head, free of D and K: weight (K, D), bias (K,) → (K, F), or (len(rows), F) for
    the rows ``rows`` only (the head's statistics still use every row); F = len(:data:`FEATURE_NAMES`).

    Alone: norm / median norm, mean, std and max |w| over the rms, skew, excess kurtosis, share of positive
    entries, correlation of |w| (and w) with the head's median column profile, cosine with the mean row, share
    of energy in the head's top singular subspaces, bias z-score; each also as its rank among the K rows.
    Against the other rows: whether another row has the bit-identical bias, the log relative gap to the nearest
    other row norm, the best and second-best |cosine|
    (and the best one's sign), the best sign-pattern agreement, the log norm ratio to the best-cosine and to the
    best-sign partner, the bias difference and cosine to the best-sign partner."""
    w, b = _as_head(weight, bias)
    k, d = w.shape
    index = np.arange(k) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= k):
        raise InvalidArgument(f"rows must be positions in 0..{k - 1}")
    norms2 = (w * w).sum(1)
    norms = np.sqrt(norms2)
    rms = np.maximum(norms / np.sqrt(d), _TINY)
    mean = w.mean(1)
    centred = w - mean[:, None]
    std = centred.std(1)
    z = centred / np.maximum(std, _TINY)[:, None]
    bias_scale = b.std() if b.std() > _TINY else 1.0
    centroid = w.mean(0)
    single = np.column_stack([
        norms / max(float(np.median(norms)), _TINY), mean / rms, std / rms, (z ** 3).mean(1), (z ** 4).mean(1) - 3,
        (w > 0).mean(1), np.abs(w).max(1) / rms, _row_corr(np.abs(w), np.median(np.abs(w), axis=0)),
        _row_corr(w, np.median(w, axis=0)),
        w @ centroid / np.maximum(norms * np.linalg.norm(centroid), _TINY),
        _subspace_energy(w, norms2), (b - np.median(b)) / bias_scale])
    ranks = np.column_stack([_ranks(column) for column in single.T])

    # against the other rows (only for the requested rows: (r, K) matrices)
    own = (np.arange(len(index)), index)
    _, inverse, counts = np.unique(b, return_inverse=True, return_counts=True)
    unit = (w / np.maximum(norms, _TINY)[:, None]).astype(np.float32)
    cos = (unit[index] @ unit.T).astype(np.float64)
    abs_cos = np.abs(cos)
    abs_cos[own] = -np.inf
    partner, best_abs, second_abs = _best_two(abs_cos)
    signs = np.sign(w).astype(np.float32)
    agreement = (signs[index] @ signs.T).astype(np.float64) / d  # 1: identical sign patterns
    agreement[own] = -np.inf
    # agreements are multiples of 1/D: ties broken by |cosine| (< 1/D apart), not by row order
    sign_partner, _, _ = _best_two(agreement + 1e-7 * np.maximum(abs_cos, 0.0))
    best_agreement = agreement[np.arange(len(index)), sign_partner]
    safe = np.maximum(norms, _TINY)
    pairwise = np.column_stack([
        (counts[inverse] > 1)[index].astype(np.float64), _norm_gap(norms)[index], best_abs, cos[np.arange(len(index)), partner], second_abs,
        np.log(safe[index] / safe[partner]), best_agreement, np.log(safe[index] / safe[sign_partner]),
        (b[index] - b[sign_partner]) / bias_scale, cos[np.arange(len(index)), sign_partner]])
    features = np.column_stack([single[index], ranks[index], pairwise])
    return np.nan_to_num(features, nan=0.0, posinf=1e6, neginf=-1e6)


@dataclass(frozen=True)
class RowClassifier:
    """A fitted real-vs-fake row classifier (scikit-learn gradient boosting on :func:`row_features`).
    ``examples``: the heads it was fitted on; ``seed``: its random state."""

    estimator: Any
    examples: int
    seed: int

    def scores(self, weight: Any, bias: Any) -> np.ndarray:
        """weight (K, D), bias (K,) → (K,) the probability that each row is real."""
        return self.estimator.predict_proba(row_features(weight, bias))[:, 1]

    def believed_real(self, weight: Any, bias: Any, n_real: int) -> np.ndarray:
        """(n_real,) sorted positions of the ``n_real`` rows most likely real (ties: the lower position)."""
        scores = self.scores(weight, bias)
        if not 1 <= n_real <= len(scores):
            raise InvalidArgument(f"n_real must be in 1..{len(scores)}, got {n_real!r}")
        return np.sort(np.argsort(-scores, kind="stable")[:n_real])


def fit_features(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], *, seed: int = 0) -> RowClassifier:
    """A :class:`RowClassifier` from precomputed :func:`row_features` blocks (r_i, F) and their real flags
    (r_i,) (one block per head; both classes needed)."""
    if len(features) != len(labels) or not features:
        raise InvalidArgument("give one label array per feature block, at least one")
    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
    y = np.concatenate([np.asarray(label, dtype=bool).reshape(-1) for label in labels])
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or len(x) != len(y):
        raise InvalidArgument(f"features must be (r, {len(FEATURE_NAMES)}) blocks with one label per row")
    if y.all() or not y.any():
        raise InvalidArgument("the examples need real and fake rows")
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=31,
                                               l2_regularization=1.0, early_stopping=False, random_state=seed)
    estimator.fit(x, y)
    return RowClassifier(estimator, len(features), seed)


def fit_row_classifier(examples: Sequence[tuple[Any, Any, Any]], *, seed: int = 0,
                       rows_per_example: int | None = None) -> RowClassifier:
    """Fit on protected heads the attacker made itself: ``examples`` of (weight (K, D), bias (K,), real_mask
    (K,) bool). ``rows_per_example``: use that many rows of each head (a seeded random subset, both kinds),
    which bounds the cost of the pairwise features; None: every row."""
    rng = np.random.default_rng([seed, 7411])
    features, labels = [], []
    for weight, bias, mask in examples:
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        rows = None
        if rows_per_example is not None and rows_per_example < len(mask):
            rows = np.sort(rng.choice(len(mask), size=rows_per_example, replace=False))
        features.append(row_features(weight, bias, rows))
        labels.append(mask if rows is None else mask[rows])
    return fit_features(features, labels, seed=seed)
