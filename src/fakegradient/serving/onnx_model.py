"""A served model: an ONNX file run by ONNX Runtime, with the public metadata the export stored.

The head's fingerprint is computed from the weights actually loaded and checked against the one in the
metadata, and so is the digest of the whole model (:mod:`.integrity`), so that a corrupted or edited
``model.onnx`` is refused instead of served.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.fingerprint import head_fingerprint
from ..defaults import ORT_PROVIDERS
from ..device_head import is_device_head_file
from ..errors import FakeGradientError, InvalidArgument
from ..integrity import check_digest
from ..key import KEY_FORMAT
from ..methods import METHODS
from .settings import RuntimeOptions

TRIM_AFTER_BYTES = 8 * 2**20  # after a run on an input this large, freed memory goes back to the OS
KEY_SCAN_MAX_BYTES = 16 * 2**20  # files up to this size are parsed for a key (keys are far smaller)
PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Relu", "GlobalAveragePool"}  # after a head


@dataclass
class ServedModel:
    name: str
    path: Path
    session: Any
    input_name: str
    input_shape: list[int]  # -1 for the batch
    output_name: str
    output_shape: list[int]
    metadata: dict[str, str] = field(default_factory=dict)  # fakegradient.fingerprint: checked at load

    def infer(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        if batch.nbytes >= TRIM_AFTER_BYTES:
            release_freed_memory()
        return logits

    def parameters(self) -> dict[str, Any]:
        """Public extras for the client: fingerprint, preprocessing, class names (never a key)."""
        out: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if key.startswith("fakegradient."):
                short = key.removeprefix("fakegradient.")
                out[short] = json.loads(value) if short in ("preprocess", "categories") else value
        return out


def _providers(device: str) -> list[str]:
    """The providers for ``device``; a clear error when this ONNX Runtime cannot run on it."""
    import onnxruntime as ort

    if device not in ORT_PROVIDERS:
        raise InvalidArgument(f"--device must be one of {', '.join(ORT_PROVIDERS)}, got {device!r}")
    wanted = ORT_PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        raise FakeGradientError(f"--device {device}: this ONNX Runtime ({ort.__version__}) has no {wanted} "
                                f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    return list(ORT_PROVIDERS[device])


def load_model_dir(model_dir: Path, name: str | None = None,
                   runtime: RuntimeOptions = RuntimeOptions()) -> ServedModel:
    """Open ``model_dir/model.onnx``, check its head against its fingerprint and the whole model against its
    digest, and refuse a folder that holds a key file: keys stay on the device. A split trunk (``device-head``)
    has no head: its digest covers it, fingerprint included."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    model_dir = Path(model_dir)
    path = model_dir / "model.onnx"
    if not path.is_file():
        raise FakeGradientError(f"no model.onnx in {model_dir} (make one with `fakegradient protect`)")
    refuse_key_files(model_dir)
    data = path.read_bytes()
    try:
        graph = onnx.load_from_string(data)
    except (DecodeError, ValueError) as exc:  # a corrupted file
        raise FakeGradientError(f"cannot load {path}: not a valid ONNX file ({exc})") from None
    meta = {p.key: p.value for p in graph.metadata_props}
    split = meta.get("fakegradient.method") in [n for n, m in METHODS.items() if m.split]
    if split and "fakegradient.fingerprint" not in meta:  # a trunk has no head: the digest below covers it
        raise FakeGradientError(f"{path}: a split trunk without its fingerprint; export it again")
    fingerprint = meta["fakegradient.fingerprint"] if split else onnx_head_fingerprint(graph, path)
    if meta.setdefault("fakegradient.fingerprint", fingerprint) != fingerprint:
        raise FakeGradientError(f"{path}: the head's weights do not match the fingerprint in its metadata "
                                "(corrupted or edited file); export it again with `fakegradient protect`")
    check_digest(graph, path)  # the whole model: a corrupted backbone is refused too
    providers = _providers(runtime.device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.enable_cpu_mem_arena = runtime.cpu_arena
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    try:  # the bytes checked above are the bytes run (a file with external data is opened by path)
        session = ort.InferenceSession(str(path) if external else data, options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        raise FakeGradientError(f"cannot load {path}: {exc}") from None
    if session.get_providers()[0] != providers[0]:  # ORT falls back to the CPU when CUDA cannot start
        raise FakeGradientError(f"cannot load {path} on --device {runtime.device}: ONNX Runtime fell back to "
                                f"{session.get_providers()[0]} (are the CUDA and cuDNN libraries installed?)")
    if len(session.get_inputs()) != 1 or len(session.get_outputs()) != 1:
        raise FakeGradientError(f"{path}: the model must have one input and one output")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()

    def dims(shape) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape]

    return ServedModel(name or model_dir.resolve().name, path, session, inp.name, dims(inp.shape),
                       out.name, dims(out.shape), meta)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (other C libraries return freed memory by themselves, or cannot)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the memory freed by a large run to the OS: glibc keeps freed heap memory for reuse, so that
    without this the server's resident size would stay at its peak (the GIL is released meanwhile)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def refuse_key_files(folder: Path) -> None:
    """Raise if any file under ``folder`` (recursively, up to KEY_SCAN_MAX_BYTES) parses as a key, or is a
    device-head file (any size: its header says so)."""
    for root, _, files in os.walk(folder):
        for file in files:
            candidate = Path(root, file)
            if is_device_head_file(candidate):
                raise FakeGradientError(f"{candidate} is a device-head file: it must never reach the server")
            try:
                if not candidate.is_file() or candidate.stat().st_size > KEY_SCAN_MAX_BYTES:
                    continue
                payload = json.loads(candidate.read_bytes())
            except (ValueError, RecursionError):  # not JSON (or not text): not a key
                continue
            except OSError as exc:  # unreadable: it might be a key
                reason = exc.strerror or exc
                raise FakeGradientError(f"cannot check {candidate} for a key: {reason}") from None
            if isinstance(payload, dict) and payload.get("format") == KEY_FORMAT:
                raise FakeGradientError(f"{candidate} is a key file: keys must never reach the server")


def onnx_head_fingerprint(model: Any, path: Path) -> str:
    """``head_fingerprint`` of the head of an ONNX ``model`` (loaded from ``path``): the Gemm or 1x1 Conv
    that produces the output, followed at most by shape-only or per-channel ops; raises if there is none."""
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    stored |= {n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
               if a.name == "value"}
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name) if len(graph.output) == 1 else None
    while node is not None and node.op_type in PASS_THROUGH:
        node = producer.get(node.input[0])
    try:
        return head_fingerprint(*_head_weights(node, stored, path.parent))
    except (KeyError, ValueError, OSError):
        raise FakeGradientError(f"{path}: cannot find the classification head (a Gemm or 1x1 Conv with "
                                "stored weights producing the output) to check its fingerprint") from None


def _head_weights(node: Any, stored: dict[str, Any], base_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(W (rows, D...), b (rows,)) of a Gemm (transB either way) or 1x1 Conv node; KeyError if it is
    no such node or its weights are computed rather than stored."""
    from onnx import helper, numpy_helper

    if node is None:
        raise KeyError("no node")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight, bias = [numpy_helper.to_array(stored[name], base_dir=str(base_dir)) if name else None
                    for name in [*node.input[1:3], ""][:2]]
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        weight = (weight if attrs.get("transB", 0) else weight.T) * np.float32(attrs.get("alpha", 1.0))
        bias = None if bias is None else bias * np.float32(attrs.get("beta", 1.0))
    elif not (node.op_type == "Conv" and attrs.get("group", 1) == 1 and weight.shape[2:] == (1, 1)):
        raise KeyError(node.op_type)
    return weight, np.zeros(len(weight), np.float32) if bias is None else bias.reshape(-1)
