"""SHA-256 fingerprint of a protected head (numpy only, so device clients can check it)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def head_fingerprint(weight: Any, bias: Any) -> str:
    """Hex SHA-256 of the encrypted head: weight (2N, D...) and bias (2N,) as float32 little-endian.

    Accepts numpy arrays or torch tensors (CPU or GPU). The fingerprint is a hash of public
    data (the served weights) and reveals nothing about the key.
    """
    w = _as_float32(weight)
    b = _as_float32(bias)
    digest = hashlib.sha256()
    digest.update(f"fakegradient-head:{w.shape[0]}x{int(np.prod(w.shape[1:]))}:".encode())
    digest.update(w.reshape(w.shape[0], -1).tobytes())
    digest.update(b.tobytes())
    return digest.hexdigest()


def _as_float32(values: Any) -> np.ndarray:
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(values, dtype="<f4"))
