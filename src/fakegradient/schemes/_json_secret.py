"""The JSON file layout shared by the candidate designs' secrets (:mod:`.decoys`, :mod:`.mixing`): one object
with a ``format`` field, a SHA-256 ``checksum`` of the rest, and the common fields of every secret (numpy +
stdlib only)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import KeyFileError

HEX64 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


def checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dump(payload: dict[str, Any]) -> bytes:
    """``payload`` with its checksum, as the file's bytes."""
    return (json.dumps(payload | {"checksum": checksum(payload)}, sort_keys=True) + "\n").encode()


def sniffs(prefix: bytes, fmt: str) -> bool:
    """Whether ``prefix`` starts a JSON object declaring ``"format": fmt``."""
    return prefix.lstrip()[:1] == b"{" and re.search(rb'"format"\s*:\s*"' + re.escape(fmt.encode()) + rb'"',
                                                     prefix) is not None


def load(data: bytes, fmt: str, source: str) -> dict[str, Any]:
    """The parsed, checksum-verified payload of a file declaring ``fmt``; a one-line :class:`KeyFileError`."""
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise KeyFileError(f"{source} is not a {fmt} file (truncated or corrupted)") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise KeyFileError(f"{source} is not a {fmt} file")
    stored = payload.pop("checksum", None)
    try:
        intact = stored == checksum(payload)
    except (ValueError, RecursionError):
        intact = False
    if not intact:
        raise KeyFileError(f"{source} has been modified or corrupted (checksum mismatch)")
    return payload


def common_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """method, head, model_fingerprint, labels, fingerprint_key, seeded, checked; KeyError/TypeError otherwise."""
    fields = {name: payload[name] for name in ("method", "head", "model_fingerprint")}
    if not all(isinstance(value, str) for value in fields.values()):
        raise TypeError("method, head and model_fingerprint must be strings")
    key = payload["fingerprint_key"]
    if not (isinstance(key, str) and HEX64.fullmatch(key)):
        raise ValueError("fingerprint_key must be 64 hex digits")
    if not isinstance(payload.get("seeded", False), bool):
        raise TypeError("seeded must be true or false")
    return fields | {"labels": payload["labels"], "fingerprint_key": key, "seeded": payload.get("seeded", False)}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe(secret: Any, fmt: str) -> dict[str, Any]:
    """The public description every candidate secret gives (``Secret.describe``)."""
    return {"format": fmt, "version": 1, "method": secret.method, "n_real": secret.n_real,
            "n_outputs": secret.n_outputs, "head": secret.head, "model_fingerprint": secret.model_fingerprint} | (
        {"seeded": True} if secret.seeded else {}) | ({"n_labels": len(secret.labels)} if secret.labels else {})


def dump_secret(secret: Any, fmt: str, own: dict[str, Any]) -> bytes:
    """The file of ``secret``: its description, its ``own`` fields (what only this design keeps), the fingerprint
    key and the labels."""
    payload = describe(secret, fmt) | own | {"fingerprint_key": secret.fingerprint_key,
                                             "labels": None if secret.labels is None else list(secret.labels)}
    payload.pop("n_labels", None)
    return dump(payload)


def load_secret(data: bytes, fmt: str, source: str, build: Callable[[dict[str, Any]], T]) -> T:
    """``build(payload)`` on the verified version-1 payload of a ``fmt`` file; a bad or missing field is a
    one-line :class:`KeyFileError`."""
    payload = load(data, fmt, source)
    try:
        if payload["version"] != 1:
            raise ValueError(f"unsupported version {payload['version']!r}")
        return build(payload)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise KeyFileError(f"{source} is missing or has a bad field: {exc}") from None
