"""The device's half of split inference (``device-head``): the head W (N, D), b (N,) and the fingerprint of the
trunk the cloud serves; numpy + stdlib only.

The file is in the safetensors layout (an 8-byte little-endian header length, a JSON header, the raw
little-endian tensors), read and written here with numpy alone: the ``safetensors`` package reads it too. Its
``__metadata__`` carries the format, the head's name, the trunk's fingerprint and a SHA-256 checksum of the
metadata and the tensors, so that a truncated, edited or foreign file is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import KeyFileError, KeyMismatch
from .schemes.base import Secret, check_labels

DEVICE_HEAD_FORMAT = "fakegradient-device-head"
DEVICE_HEAD_VERSION = 2  # 2: a keyed fingerprint (fingerprint_key) and the class names (labels)
READABLE_VERSIONS = ("1", "2")
METHOD = "device-head"
MAX_HEADER_BYTES = 64 * 2**10  # our header is ~1 KB; safetensors' own limit is 100 MB
MAX_DEVICE_HEAD_BYTES = 512 * 2**20  # a 21k-class head on 2048 features is ~170 MB
_PREFIX = 8  # the header's length, u64 little-endian
_TENSORS = ("bias", "weight")  # in file order


@dataclass(frozen=True, eq=False)
class DeviceHead(Secret):
    """The head a device keeps: ``logits = features @ weight.T + bias``; the ``device-head`` scheme's secret.

    ``weight`` (N, D) and ``bias`` (N,) float32; ``head`` the layer's name in the original model;
    ``model_fingerprint`` what the cloud publishes for the served trunk (its digest,
    :func:`fakegradient.split.trunk_fingerprint`, keyed with ``fingerprint_key``; the plain digest in version-1
    files): a device refuses a cloud serving another trunk. ``labels``: the N class names.
    """

    FORMAT: ClassVar[str] = DEVICE_HEAD_FORMAT
    MAX_BYTES: ClassVar[int] = MAX_DEVICE_HEAD_BYTES

    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    head: str
    model_fingerprint: str
    method: str = METHOD
    labels: tuple[str, ...] | None = None
    fingerprint_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        weight = np.ascontiguousarray(np.asarray(self.weight, dtype="<f4"))
        bias = np.ascontiguousarray(np.asarray(self.bias, dtype="<f4")).reshape(-1)
        if weight.ndim != 2 or 0 in weight.shape or bias.shape != weight.shape[:1]:
            raise KeyFileError(f"a device head needs weight (N, D) and bias (N,), got {weight.shape} and "
                               f"{bias.shape}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise KeyFileError("a device head's weights must be finite")
        if self.method != METHOD:
            raise KeyFileError(f"a device head's method is {METHOD!r}, got {self.method!r}")
        try:
            object.__setattr__(self, "labels", check_labels(self.labels, weight.shape[0]))
        except ValueError as exc:
            raise KeyFileError(f"device head: {exc}") from None
        weight.flags.writeable = bias.flags.writeable = False
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)

    @property
    def n_real(self) -> int:
        """N: the classes."""
        return self.weight.shape[0]

    @property
    def n_features(self) -> int:
        """D: the width of the features the cloud serves."""
        return self.weight.shape[1]

    @property
    def n_outputs(self) -> int:
        """The served model's output width: D features (a :class:`Key`'s is 2N)."""
        return self.n_features

    @property
    def served_classes(self) -> bool:
        """The cloud serves features: no served position is a class."""
        return False

    def describe_kind(self) -> str:
        return "device head"

    def decrypt(self, features: Any, *, fingerprint: str | None = None) -> Any:
        """(..., D) served features → (..., N) real logits ``features @ W.T + b``: the same door as
        :meth:`Key.decrypt`, so the classification core and the evaluation take either. numpy in, float32
        numpy out; a torch tensor in, a differentiable tensor out (its dtype and device)."""
        if fingerprint is not None:
            self.check_fingerprint(fingerprint)
        if features.shape[-1] != self.n_features:
            raise KeyMismatch(f"expected features of width {self.n_features} (D), got {features.shape[-1]}")
        if hasattr(features, "new_tensor"):  # torch, without importing it here
            return features @ features.new_tensor(self.weight).T + features.new_tensor(self.bias)
        return np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias


    def describe(self) -> dict[str, Any]:
        """What the file holds, without the weights."""
        return {"format": DEVICE_HEAD_FORMAT, "version": DEVICE_HEAD_VERSION, "method": self.method,
                "n_real": self.n_real, "n_features": self.n_features, "head": self.head,
                "model_fingerprint": self.model_fingerprint, "dtype": "float32",
                "weight_bytes": self.weight.nbytes + self.bias.nbytes} | (
                    {"n_labels": len(self.labels)} if self.labels else {})

    def to_bytes(self) -> bytes:
        versioned = self.fingerprint_key is not None or self.labels is not None
        meta = {"format": DEVICE_HEAD_FORMAT, "version": str(DEVICE_HEAD_VERSION if versioned else 1),
                "method": self.method, "head": self.head, "model_fingerprint": self.model_fingerprint}
        if versioned:  # safetensors metadata holds strings only
            meta |= {"labels": json.dumps(None if self.labels is None else list(self.labels)),
                     "fingerprint_key": self.fingerprint_key or ""}
        arrays = {"bias": self.bias, "weight": self.weight}
        meta["checksum"] = _checksum(meta, arrays)
        header: dict[str, Any] = {"__metadata__": meta}
        offset = 0
        for name in _TENSORS:
            header[name] = {"dtype": "F32", "shape": list(arrays[name].shape),
                            "data_offsets": [offset, offset + arrays[name].nbytes]}
            offset += arrays[name].nbytes
        text = json.dumps(header, sort_keys=True).encode()
        text += b" " * (-len(text) % 8)  # safetensors aligns the tensors on 8 bytes
        return len(text).to_bytes(_PREFIX, "little") + text + b"".join(arrays[n].tobytes() for n in _TENSORS)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "device head") -> DeviceHead:
        """Parse a device-head file's bytes; any defect is a one-line :class:`KeyFileError`."""
        header = _header(data, source)
        meta = header.pop("__metadata__", None)
        if not isinstance(meta, dict) or meta.get("format") != DEVICE_HEAD_FORMAT:
            raise KeyFileError(f"{source} is not a fakegradient device-head file")
        version = meta.get("version")
        if version not in READABLE_VERSIONS:
            raise KeyFileError(f"{source}: unsupported device-head format version {str(version)[:40]}"
                               + (" (made by a newer fakegradient: upgrade it)" if str(version).isdigit() else ""))
        body = memoryview(data)[_PREFIX + int.from_bytes(data[:_PREFIX], "little"):]
        arrays = _tensors(header, body, source)
        checksum = meta.pop("checksum", None)
        if checksum != _checksum(meta, arrays):
            raise KeyFileError(f"{source} has been modified or corrupted (checksum mismatch)")
        names = ("head", "model_fingerprint", "method") + (("labels", "fingerprint_key") if version != "1" else ())
        strings = {name: meta.get(name) for name in names}
        bad = [name for name, value in strings.items() if not isinstance(value, str)]
        if bad or set(meta) != set(strings) | {"format", "version"}:
            raise KeyFileError(f"{source} is missing or has a bad field: {', '.join(bad) or sorted(meta)}")
        if version != "1":
            try:
                strings["labels"] = json.loads(strings["labels"])
            except (ValueError, RecursionError):
                raise KeyFileError(f"{source}: its labels are not JSON") from None
            strings["fingerprint_key"] = strings["fingerprint_key"] or None
        return cls(arrays["weight"], arrays["bias"], **strings)

    @classmethod
    def sniff(cls, prefix: bytes) -> bool:
        """A safetensors header whose metadata declares the device-head format."""
        return _declared_format(prefix) == DEVICE_HEAD_FORMAT


def _declared_format(prefix: bytes) -> str | None:
    """The ``format`` in the metadata of a safetensors header at the start of ``prefix``, else None."""
    length = int.from_bytes(prefix[:_PREFIX], "little") if len(prefix) >= _PREFIX else 0
    if not 0 < length <= min(MAX_HEADER_BYTES, len(prefix) - _PREFIX):
        return None
    try:
        header = json.loads(prefix[_PREFIX:_PREFIX + length])
    except (ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta.get("format") if isinstance(meta, dict) else None


def _header(data: bytes, source: str) -> dict[str, Any]:
    length = int.from_bytes(data[:_PREFIX], "little") if len(data) >= _PREFIX else 0
    if not 0 < length <= min(MAX_HEADER_BYTES, len(data) - _PREFIX):
        raise KeyFileError(f"{source} is not a fakegradient device-head file (truncated or corrupted)")
    try:
        header = json.loads(data[_PREFIX:_PREFIX + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeyFileError(f"{source} is not a fakegradient device-head file (truncated or corrupted)") from None
    if not isinstance(header, dict):
        raise KeyFileError(f"{source} is not a fakegradient device-head file")
    return header


def _tensors(header: dict[str, Any], body: memoryview, source: str) -> dict[str, np.ndarray]:
    """The tensors ``bias`` (N,) and ``weight`` (N, D), F32, back to back and filling ``body`` exactly."""
    if sorted(header) != sorted(_TENSORS):
        raise KeyFileError(f"{source}: expected tensors {list(_TENSORS)}, found {sorted(header)[:5]}")
    arrays, offset = {}, 0
    for name, ndim in zip(_TENSORS, (1, 2)):
        entry = header[name]
        try:
            shape, (begin, end) = list(entry["shape"]), entry["data_offsets"]
            valid = (entry["dtype"] == "F32" and len(shape) == ndim
                     and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
                     and begin == offset and isinstance(end, int) and end - begin == 4 * math.prod(shape)
                     and end <= len(body))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise KeyFileError(f"{source}: tensor {name!r} is malformed or truncated")
        arrays[name] = np.frombuffer(body[begin:end], dtype="<f4").reshape(shape)
        offset = end
    if offset != len(body):
        raise KeyFileError(f"{source}: {len(body) - offset} bytes after the tensors (corrupted)")
    return arrays


def _checksum(meta: dict[str, str], arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for name in _TENSORS:
        digest.update(f"{name}:{list(arrays[name].shape)}".encode())
        digest.update(np.ascontiguousarray(arrays[name], dtype="<f4").tobytes())
    return digest.hexdigest()
