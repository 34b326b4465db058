"""The secret key K: a permutation of the 2N output positions (Algorithms 2 and 3).

``permutation[i]`` is the encrypted position of plain output ``i``; plain outputs are
``[real_0..real_{N-1}, fake_0..fake_{N-1}]``. Decryption needs numpy only (device clients).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from ..errors import InvalidArgument


def generate_permutation(n_outputs: int, seed: int | None = None) -> np.ndarray:
    """A uniformly random permutation of ``range(n_outputs)`` (int64, shape (n_outputs,)).

    Without ``seed`` it is drawn from the OS CSPRNG (``secrets``, Fisher-Yates).
    ``seed`` makes it reproducible for experiments and is NOT secure: never use a seeded
    key for a deployed model.
    """
    if n_outputs < 2:
        raise InvalidArgument(f"need at least 2 outputs to permute, got {n_outputs}")
    if seed is not None:
        return np.random.default_rng(seed).permutation(n_outputs).astype(np.int64)
    order = list(range(n_outputs))
    secrets.SystemRandom().shuffle(order)
    return np.asarray(order, dtype=np.int64)


def is_permutation(values: Any, n_outputs: int | None = None) -> bool:
    """True if ``values`` is a 1-D integer permutation of ``range(len(values))``."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        return False
    if n_outputs is not None and arr.shape[0] != n_outputs:
        return False
    return bool(np.array_equal(np.sort(arr), np.arange(arr.shape[0])))


def inverse_permutation(permutation: np.ndarray) -> np.ndarray:
    """``inv`` with ``inv[permutation[i]] = i``."""
    inv = np.empty_like(permutation)
    inv[permutation] = np.arange(permutation.shape[0], dtype=permutation.dtype)
    return inv


def encrypt_rows(rows: Any, permutation: np.ndarray) -> Any:
    """Algorithm 2: ``rows_en[K[i]] = rows[i]`` along dim 0 (weights (2N, D) or biases (2N,))."""
    _check_width(rows.shape[0], permutation)
    index = _index_like(rows, inverse_permutation(permutation))
    return rows[index]


def decrypt(encrypted: Any, permutation: np.ndarray) -> Any:
    """Algorithm 3: ``f'[..., i] = f_en[..., K[i]]`` for outputs of shape (..., 2N).

    Works on numpy arrays and torch tensors (returns the same type). The real logits
    are ``f'[..., :N]``.
    """
    _check_width(encrypted.shape[-1], permutation)
    return encrypted[..., _index_like(encrypted, permutation)]


def decrypt_real(encrypted: Any, permutation: np.ndarray, n_real: int) -> Any:
    """The real logits ``decrypt(encrypted, K)[..., :n_real]`` (..., N), gathering only N columns."""
    _check_width(encrypted.shape[-1], permutation)
    index = permutation[:n_real]
    if isinstance(encrypted, np.ndarray):
        return np.take(encrypted, index, axis=-1)
    return encrypted[..., _index_like(encrypted, index)]


def top1_tables(permutation: np.ndarray, n_real: int) -> tuple[np.ndarray, np.ndarray]:
    """(penalty (2N,) float32: 0 at real positions, -inf at fake ones; K⁻¹ (2N,)) for ``real_top1``."""
    penalty = np.full(permutation.shape[0], -np.inf, dtype=np.float32)
    penalty[permutation[:n_real]] = 0
    return penalty, inverse_permutation(permutation)


def real_top1(encrypted: np.ndarray, tables: tuple[np.ndarray, np.ndarray], chunk: int = 512) -> np.ndarray:
    """Top-1 real class of numpy outputs (..., 2N) → (...,) without materialising the real logits.

    Masks the fake positions with -inf and maps the winning encrypted position back through
    K⁻¹ (``tables`` from :func:`top1_tables`), in cache-sized chunks of rows. Same answer as
    ``decrypt_real(...).argmax(-1)``.
    """
    penalty, plain_of = tables
    _check_width(encrypted.shape[-1], plain_of)
    flat = encrypted.reshape(-1, encrypted.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.int64)
    for start in range(0, flat.shape[0], chunk):
        out[start : start + chunk] = plain_of[(flat[start : start + chunk] + penalty).argmax(axis=1)]
    return out.reshape(encrypted.shape[:-1])


def _check_width(width: int, permutation: np.ndarray) -> None:
    if width != permutation.shape[0]:
        raise InvalidArgument(
            f"outputs have width {width} but the key permutes {permutation.shape[0]} outputs"
        )


def _index_like(values: Any, index: np.ndarray) -> Any:
    if type(values).__module__.startswith("torch"):
        import torch  # only when the caller already uses torch

        return torch.as_tensor(index, device=values.device)
    return index
