"""Whole-model integrity of ``model.onnx``: a SHA-256 digest of everything the graph computes with.

The export stores it in the metadata (``fakegradient.digest``); the server and ``export-triton`` recompute
it on load and refuse a mismatch, so that a corrupted backbone is refused, not served with confident wrong
labels (the head's fingerprint covers the head only). It detects corruption, not a deliberate edit: whoever
edits the file can recompute the digest (the key's fingerprint check covers the head against that).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import FakeGradientError

DIGEST_KEY = "fakegradient.digest"
_DOMAIN = b"fakegradient-onnx-digest-v1\0"


def onnx_digest(model: Any, base_dir: Path) -> str:
    """Hex SHA-256 of an ONNX ``model`` (a ModelProto; external data read from ``base_dir``): every
    initializer's name, data type, shape and values, every node, the graph's inputs and outputs, the opset
    imports and the metadata except the digest itself. Independent of how the values are stored (raw bytes
    or typed fields)."""
    from onnx import numpy_helper

    digest = hashlib.sha256(_DOMAIN)

    def part(data: bytes) -> None:  # length-prefixed: no two sequences of parts hash alike
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    graph = model.graph
    for tensor in graph.initializer:
        values = np.ascontiguousarray(numpy_helper.to_array(tensor, base_dir=str(base_dir)))
        part(tensor.name.encode())
        part(f"{tensor.data_type}:{list(tensor.dims)}".encode())
        if values.dtype.kind == "O":  # strings: their text, not the objects' addresses
            part(b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in values.flat))
        else:
            part(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    for sparse in graph.sparse_initializer:
        part(sparse.SerializeToString(deterministic=True))
    for message in [*graph.node, *graph.input, *graph.output, *model.opset_import]:
        part(message.SerializeToString(deterministic=True))
    for prop in sorted((p.key, p.value) for p in model.metadata_props if p.key != DIGEST_KEY):
        part("\0".join(prop).encode())
    return digest.hexdigest()


def seal(model: Any, base_dir: Path) -> None:
    """Store (or replace) the digest of ``model`` in its metadata; call it after the last other edit."""
    for index in reversed(range(len(model.metadata_props))):
        if model.metadata_props[index].key == DIGEST_KEY:
            del model.metadata_props[index]
    model.metadata_props.add(key=DIGEST_KEY, value=onnx_digest(model, base_dir))


def seal_file(path: Path) -> None:
    """Seal an existing ``model.onnx`` (e.g. an unprotected model exported by torch directly), atomically."""
    import onnx

    model = onnx.load(str(path))
    seal(model, Path(path).parent)
    with atomic_path(path) as temporary:
        onnx.save(model, str(temporary))


def check_digest(model: Any, path: Path) -> None:
    """Raise unless ``model`` (loaded from ``path``) carries a digest equal to the one recomputed."""
    stored = [p.value for p in model.metadata_props if p.key == DIGEST_KEY]
    if not stored:
        raise FakeGradientError(f"{path} has no integrity digest ({DIGEST_KEY}; files written before it existed "
                                "cannot be checked): export it again with `fakegradient protect`")
    try:
        actual = onnx_digest(model, Path(path).parent)
    except (ValueError, TypeError, OSError) as exc:  # external data missing or of the wrong size, odd types
        raise FakeGradientError(f"{path}: cannot read its weights to check them ({exc})") from None
    if stored != [actual]:
        raise FakeGradientError(f"{path}: the weights or graph do not match the digest in its metadata "
                                "(corrupted or edited file); export it again with `fakegradient protect`")
