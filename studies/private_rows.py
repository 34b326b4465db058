"""The file-only attacker of :mod:`studies.private` at its strongest: a learned row classifier.

The cloud holds the served file, hence the protected head's rows (W (K, D), b (K,)) and the scheme's public code.
It trains models of its own on its own images (the served graph names the owner's architecture), protects them
with the same scheme under many keys, and learns from those heads — whose keys it knows — which rows are real
(:func:`fit_row_classifier`); then it ranks the owner's rows and keeps the N most likely real
(:meth:`RowClassifier.believed_real`). Each row is described by dimension-free statistics (so heads of other
widths train it): its norm, bias and moments relative to the head's other rows, and how closely it pairs with
another row (equal bias, sign pattern, direction), the leaks the oracles of
:mod:`fakegradient.attacks.key_recovery` use by hand. A minimal explicit classifier (sklearn's
LogisticRegression on standardised statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def row_statistics(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """weight (K, D), bias (K,) → (K, 12) per-row statistics that do not depend on D or on the head's scale."""
    w = np.asarray(weight, dtype=np.float64).reshape(len(weight), -1)
    b = np.asarray(bias, dtype=np.float64)
    norm = np.linalg.norm(w, axis=1)
    scale = np.median(norm) + 1e-12
    centred = w - w.mean(1, keepdims=True)
    std = centred.std(1) + 1e-12
    z = centred / std[:, None]
    unit = w / (norm[:, None] + 1e-12)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    signs = np.sign(w)
    agreement = signs @ signs.T / w.shape[1]
    np.fill_diagonal(agreement, -np.inf)
    bias_scale = np.median(np.abs(b - np.median(b))) + 1e-12
    equal_bias = (b[:, None] == b[None, :]).sum(1) - 1
    return np.stack([norm / scale, (b - np.median(b)) / bias_scale, w.mean(1) / std, (z**3).mean(1),
                     (z**4).mean(1), (w > 0).mean(1), w.max(1) / (norm + 1e-12), w.min(1) / (norm + 1e-12),
                     np.abs(w).sum(1) / (norm * np.sqrt(w.shape[1]) + 1e-12), cosine.max(1), agreement.max(1),
                     np.minimum(equal_bias, 2)], axis=1)


@dataclass
class RowClassifier:
    """A fitted classifier of real versus fake rows: ``model`` (sklearn pipeline) on :func:`row_statistics`."""

    model: object
    training_rows: int
    training_accuracy: float

    def real_probability(self, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """(K,) the probability that each row of the head (K, D), (K,) is real."""
        return self.model.predict_proba(row_statistics(weight, bias))[:, 1]

    def believed_real(self, weight: np.ndarray, bias: np.ndarray, n_real: int) -> np.ndarray:
        """The ``n_real`` positions most likely real (sorted)."""
        return np.sort(np.argsort(-self.real_probability(weight, bias), kind="stable")[:n_real])


def fit_row_classifier(examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> RowClassifier:
    """examples: (weight (K, D), bias (K,), real positions (N,)) of heads whose keys the attacker knows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, targets = [], []
    for weight, bias, real in examples:
        features.append(row_statistics(weight, bias))
        label = np.zeros(len(weight), dtype=int)
        label[np.asarray(real)] = 1
        targets.append(label)
    x, y = np.concatenate(features), np.concatenate(targets)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    model.fit(x, y)
    return RowClassifier(model, len(y), float(model.score(x, y)))
