"""The secret key: what a device keeps to decrypt the cloud's outputs (numpy + stdlib only)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .core.permutation import decrypt, decrypt_real, is_permutation, real_top1, top1_tables
from .errors import KeyFileError, KeyMismatch
from .schemes.base import Secret, check_labels
from .secret_files import read_private_file, warn_if_shared

KEY_FORMAT = "fakegradient-key"
KEY_VERSION = 2  # 2: the fingerprint is keyed (fingerprint_key) and the class names travel with the key
READABLE_VERSIONS = (1, 2)
MAX_KEY_BYTES = 8 * 2**20  # ~8 bytes per output: room for ~500 000 classes; anything larger is not a key

_FORMAT_FIELD = re.compile(rb'"format"\s*:\s*"' + KEY_FORMAT.encode() + rb'"')
_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Key(Secret):
    """A permutation K of the 2N outputs of one protected model: the fake-row schemes' secret.

    ``permutation[i]`` is where plain output ``i`` sits in the served model; plain outputs
    ``0..N-1`` are the real classes. ``model_fingerprint`` is what the bundle publishes: the protected head's
    digest (:func:`~fakegradient.core.fingerprint.head_fingerprint`) keyed with ``fingerprint_key``
    (:func:`~fakegradient.core.fingerprint.keyed_fingerprint`; None in version-1 files: the plain digest).
    ``labels``: the N class names, so that the device needs no other file.
    """

    FORMAT: ClassVar[str] = KEY_FORMAT
    MAX_BYTES: ClassVar[int] = MAX_KEY_BYTES

    permutation: np.ndarray = field(repr=False)
    n_real: int
    method: str
    scale: float | None
    model_fingerprint: str
    head: str = ""
    seeded: bool = False  # made with seed=: reproducible, hence NOT secure (experiments only)
    labels: tuple[str, ...] | None = None
    fingerprint_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _is_int(self.n_real) or self.n_real < 1:
            raise KeyFileError(f"a key needs a positive number of classes, got n_real={self.n_real!r}")
        if not is_permutation(self.permutation, 2 * self.n_real):
            raise KeyFileError(f"key is not a permutation of {2 * self.n_real} outputs")
        try:
            object.__setattr__(self, "labels", check_labels(self.labels, self.n_real))
        except ValueError as exc:
            raise KeyFileError(f"key: {exc}") from None
        object.__setattr__(self, "_top1_tables", top1_tables(self.permutation, self.n_real))

    @property
    def n_outputs(self) -> int:
        return 2 * self.n_real

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise :class:`KeyMismatch` unless ``fingerprint`` is the one this key was made for."""
        if fingerprint != self.model_fingerprint:
            raise KeyMismatch(
                "this key belongs to another model: key is for model "
                f"{self.model_fingerprint[:16]}…, the outputs come from {fingerprint[:16]}…"
            )

    def _check(self, logits: Any, fingerprint: str | None) -> None:
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if logits.shape[-1] != self.n_outputs:
            raise KeyMismatch(
                f"expected outputs of width {self.n_outputs} (2N), got {logits.shape[-1]}"
            )

    def decrypt_all(self, logits: Any, *, fingerprint: str | None = None) -> Any:
        """(..., 2N) encrypted outputs → (..., 2N) plain outputs ``[real, fake]``."""
        self._check(logits, fingerprint)
        return decrypt(logits, self.permutation)

    def decrypt(self, logits: Any, *, fingerprint: str | None = None) -> Any:
        """(..., 2N) encrypted outputs → (..., N) real logits (same type as ``logits``)."""
        self._check(logits, fingerprint)
        return decrypt_real(logits, self.permutation, self.n_real)

    def top1(self, logits: np.ndarray, *, fingerprint: str | None = None) -> np.ndarray:
        """(..., 2N) numpy encrypted outputs → (...,) real top-1 class (fast path for clients)."""
        self._check(logits, fingerprint)
        return real_top1(np.asarray(logits), self._top1_tables)

    def class_positions(self) -> np.ndarray:
        """(N,) the served position of each real class."""
        return np.asarray(self.permutation[: self.n_real])

    def is_fake(self, encrypted_index: Any) -> Any:
        """Whether encrypted output position(s) hold a fake class (bool, numpy)."""
        plain_of = self._top1_tables[1]
        return plain_of[np.asarray(encrypted_index)] >= self.n_real

    def describe(self) -> dict[str, Any]:
        """What the key file holds, without the permutation and the fingerprint key."""
        return {
            "format": KEY_FORMAT,
            "version": self._version,
            "n_real": self.n_real,
            "n_outputs": self.n_outputs,
            "method": self.method,
            "scale": self.scale,
            "head": self.head,
            "model_fingerprint": self.model_fingerprint,
        } | ({"seeded": True} if self.seeded else {}) | (  # absent in unseeded keys: older files stay valid
            {"n_labels": len(self.labels)} if self.labels else {})

    @property
    def _version(self) -> int:
        return 1 if self.fingerprint_key is None and self.labels is None else KEY_VERSION

    def to_bytes(self) -> bytes:
        payload = self.describe() | {"permutation": self.permutation.tolist()}
        payload.pop("n_labels", None)
        if self._version > 1:
            payload |= {"labels": None if self.labels is None else list(self.labels),
                        "fingerprint_key": self.fingerprint_key}
        payload["checksum"] = _checksum(payload)
        return (json.dumps(payload, sort_keys=True) + "\n").encode()

    @classmethod
    def sniff(cls, prefix: bytes) -> bool:
        """A JSON object declaring ``"format": "fakegradient-key"`` in ``prefix`` (however it is spaced)."""
        return prefix.lstrip()[:1] == b"{" and _FORMAT_FIELD.search(prefix) is not None

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "key") -> Key:
        """Parse a key file's bytes; any defect is a one-line :class:`KeyFileError`."""
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # bad JSON, too deep, too many digits
            raise KeyFileError(f"{source} is not a fakegradient key file (truncated or corrupted)") from None
        if not isinstance(payload, dict) or payload.get("format") != KEY_FORMAT:
            raise KeyFileError(f"{source} is not a fakegradient key file")
        version = payload.get("version")
        if not _is_int(version) or version not in READABLE_VERSIONS:
            newer = _is_int(version) and version > KEY_VERSION
            raise KeyFileError(f"{source}: unsupported key format version {repr(version)[:40]}"
                               + (" (made by a newer fakegradient: upgrade it)" if newer else ""))
        checksum = payload.pop("checksum", None)
        try:
            intact = checksum == _checksum(payload)
        except (ValueError, RecursionError):
            intact = False
        if not intact:
            raise KeyFileError(f"{source} has been modified or corrupted (checksum mismatch)")
        try:
            return cls(**_fields(payload, version))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise KeyFileError(f"{source} is missing or has a bad field: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Key:
        """Read a key file: a regular file of at most :data:`MAX_KEY_BYTES`. On POSIX, logs a warning when
        group or others may read or write it (as ssh does for private keys)."""
        data, mode = read_private_file(path, MAX_KEY_BYTES, "key file")
        key = cls.from_bytes(data, source=f"key file {path}")
        if key.seeded:
            _log.warning("key file %s was made with a seed: anyone who knows or guesses the seed can rebuild the "
                         "permutation; it is NOT secure (experiments only) — protect again without --seed", path)
        warn_if_shared(_log, path, mode, "key file", "can decrypt the model's outputs")
        return key


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of numpy logits (..., N): the device's class probabilities."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fields(payload: dict[str, Any], version: int) -> dict[str, Any]:
    """The :class:`Key` arguments in a parsed key file; KeyError/ValueError for a missing or mistyped field."""
    n_real, permutation, scale = payload["n_real"], payload["permutation"], payload["scale"]
    if not _is_int(n_real) or n_real < 1:
        raise ValueError("n_real must be a positive integer")
    n = 2 * n_real
    if not (isinstance(permutation, list) and len(permutation) == n
            and all(_is_int(v) and 0 <= v < n for v in permutation)):
        raise ValueError(f"permutation must be a list of {n} integers in [0, {n})")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)
                              or not math.isfinite(float(scale))):
        raise ValueError("scale must be a finite number or null")
    seeded = payload.get("seeded", False)
    if not isinstance(seeded, bool):
        raise TypeError("seeded must be true or false")
    strings = {name: payload[name] if name != "head" else payload.get(name, "")
               for name in ("method", "model_fingerprint", "head")}
    for name, value in strings.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
    extra: dict[str, Any] = {}
    if version > 1:
        fingerprint_key = payload["fingerprint_key"]
        if not (isinstance(fingerprint_key, str) and len(fingerprint_key) == 64
                and all(c in "0123456789abcdef" for c in fingerprint_key)):
            raise ValueError("fingerprint_key must be 64 hex digits")
        extra = {"labels": payload["labels"], "fingerprint_key": fingerprint_key}
    return strings | extra | {"permutation": np.asarray(permutation, dtype=np.int64), "n_real": int(n_real),
                              "scale": None if scale is None else float(scale), "seeded": seeded}


def _checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()
