"""The secret key: what a device keeps to decrypt the cloud's outputs (numpy + stdlib only)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from .atomic import write_bytes_atomic, write_new
from .core.permutation import decrypt, decrypt_real, is_permutation, real_top1, top1_tables
from .errors import KeyFileError, KeyMismatch

KEY_FORMAT = "fakegradient-key"
KEY_VERSION = 1
MAX_KEY_BYTES = 8 * 2**20  # ~8 bytes per output: room for ~500 000 classes; anything larger is not a key

_log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Key:
    """A permutation K of the 2N outputs of one protected model.

    ``permutation[i]`` is where plain output ``i`` sits in the served model; plain outputs
    ``0..N-1`` are the real classes. ``model_fingerprint`` is the SHA-256 of the protected
    head (:func:`fakegradient.core.fingerprint.head_fingerprint`).
    """

    permutation: np.ndarray = field(repr=False)
    n_real: int
    method: str
    scale: float | None
    model_fingerprint: str
    head: str = ""
    seeded: bool = False  # made with seed=: reproducible, hence NOT secure (experiments only)

    def __post_init__(self) -> None:
        if not _is_int(self.n_real) or self.n_real < 1:
            raise KeyFileError(f"a key needs a positive number of classes, got n_real={self.n_real!r}")
        if not is_permutation(self.permutation, 2 * self.n_real):
            raise KeyFileError(f"key is not a permutation of {2 * self.n_real} outputs")
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

    def is_fake(self, encrypted_index: Any) -> Any:
        """Whether encrypted output position(s) hold a fake class (bool, numpy)."""
        plain_of = self._top1_tables[1]
        return plain_of[np.asarray(encrypted_index)] >= self.n_real

    def describe(self) -> dict[str, Any]:
        """What the key file holds, without the permutation itself."""
        return {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "n_real": self.n_real,
            "n_outputs": self.n_outputs,
            "method": self.method,
            "scale": self.scale,
            "head": self.head,
            "model_fingerprint": self.model_fingerprint,
        } | ({"seeded": True} if self.seeded else {})  # absent in unseeded keys: older files stay valid

    def to_bytes(self) -> bytes:
        payload = self.describe() | {"permutation": self.permutation.tolist()}
        payload["checksum"] = _checksum(payload)
        return (json.dumps(payload, sort_keys=True) + "\n").encode()

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
        if not _is_int(version) or version != KEY_VERSION:
            raise KeyFileError(f"{source}: unsupported key format version {repr(version)[:40]}")
        checksum = payload.pop("checksum", None)
        try:
            intact = checksum == _checksum(payload)
        except (ValueError, RecursionError):
            intact = False
        if not intact:
            raise KeyFileError(f"{source} has been modified or corrupted (checksum mismatch)")
        try:
            return cls(**_fields(payload))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise KeyFileError(f"{source} is missing or has a bad field: {exc}") from None

    def save(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        """Write the key atomically, readable by the owner only (0600). An existing file is never replaced
        unless ``replace`` (the CLI's ``--force``, which keeps a copy of the old one first)."""
        write_secret(path, self.to_bytes(), replace=replace)

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


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
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
    return strings | {"permutation": np.asarray(permutation, dtype=np.int64), "n_real": int(n_real),
                      "scale": None if scale is None else float(scale), "seeded": seeded}


def _checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[BinaryIO | None]:
    """``path`` opened for reading if it is a regular file, else None: a folder, a device or a pipe is not
    read (no blocking on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        yield None
        return
    with os.fdopen(fd, "rb") as handle:
        yield handle


def write_secret(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> None:
    """Write a device secret (key, device head) atomically, 0600; an existing file is replaced only if ``replace``."""
    if replace:
        write_bytes_atomic(path, data, mode=0o600)
        return
    try:
        write_new(path, data, mode=0o600)
    except FileExistsError:
        raise KeyFileError(f"refusing to overwrite {path}: choose a new path") from None


def read_private_file(path: str | os.PathLike, limit: int, what: str) -> tuple[bytes, int]:
    """(contents, st_mode) of the device's secret file ``path`` (a key or a device head, named ``what``): a
    regular file of at most ``limit`` bytes, else a one-line :class:`KeyFileError`."""
    try:
        with open_regular(path) as handle:
            if handle is None:
                raise KeyFileError(f"{what} {path} is not a regular file")
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(limit + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise KeyFileError(f"{what} {path} is larger than {limit // 2**20} MiB: not a {what}")
    return data, mode


def warn_if_shared(log: logging.Logger, path: str | os.PathLike, mode: int, what: str, exposes: str) -> None:
    """On POSIX, warn when group or others may read or write a secret file (as ssh does for private keys);
    ``exposes``: what a reader of it can do."""
    if os.name == "posix" and mode & 0o066:
        log.warning("%s %s is readable or writable by group or others (mode %04o): whoever reads it %s; "
                    "run chmod 600 %s", what, path, stat.S_IMODE(mode), exposes, path)
