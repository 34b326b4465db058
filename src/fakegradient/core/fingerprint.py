"""Fingerprints of a served model (numpy only, so device clients can check them): the public SHA-256 digest of
a protected head, and the keyed fingerprint a bundle publishes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import numpy as np


def head_fingerprint(weight: Any, bias: Any) -> str:
    """Hex SHA-256 of the encrypted head: weight (2N, D...) and bias (2N,) as float32 little-endian.

    Accepts numpy arrays or torch tensors (CPU or GPU). A hash of public data (the served weights): whoever
    guesses the key and the fake rows can rebuild the head and compare, so it is published only keyed
    (:func:`keyed_fingerprint`).
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


def new_fingerprint_key(seed: int | None = None) -> str:
    """A 32-byte hex key for :func:`keyed_fingerprint`: from the CSPRNG, or (experiments, NOT secure) from
    ``seed`` so that a seeded secret is reproducible."""
    if seed is None:
        return secrets.token_hex(32)
    return hashlib.sha256(f"fakegradient-fingerprint-key:{seed}".encode()).hexdigest()


def keyed_fingerprint(digest: str, fingerprint_key: str) -> str:
    """HMAC-SHA256 of a served model's public ``digest`` under the secret's ``fingerprint_key``: what the bundle
    publishes. Only the holder of the secret can tell whether a model matches it, so the published value is no
    oracle for a guessed key (a plain hash of the served head would confirm a forged permutation)."""
    return hmac.new(bytes.fromhex(fingerprint_key), b"fakegradient-fingerprint-v2\0" + digest.encode(),
                    hashlib.sha256).hexdigest()
