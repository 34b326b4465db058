"""KServe / Triton Open Inference Protocol v2 over REST: request parsing and response building.

Pure functions on bytes and numpy arrays. Supports JSON tensors and the binary tensor data
extension (``Inference-Header-Content-Length``) that ``tritonclient`` uses by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.float32}


class ProtocolError(Exception):
    """A bad request: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    binary_outputs: bool
    request_id: str | None


def parse_infer_request(body: bytes, header_length: int | None, expected: dict[str, Any],
                        max_batch: int) -> InferRequest:
    """Parse and validate a v2 infer request against ``expected`` = {name, shape (with -1 batch)}."""
    json_part, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(400, f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(400, f"malformed JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError(400, "the request needs a non-empty 'inputs' list")
    if len(request["inputs"]) != 1:
        raise ProtocolError(400, f"the model takes exactly one input, got {len(request['inputs'])}")
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, "each input must be an object")
    if tensor.get("name") != expected["name"]:
        raise ProtocolError(400, f"unknown input {tensor.get('name')!r}; the model's input is {expected['name']!r}")
    if tensor.get("datatype") not in DATATYPES:
        raise ProtocolError(400, f"datatype {tensor.get('datatype')!r} not supported; send FP32")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(400, "'shape' must be a list of non-negative integers")
    want = expected["shape"]
    if len(shape) != len(want) or any(w != -1 and w != d for w, d in zip(want, shape)) or shape[0] < 1:
        raise ProtocolError(400, f"input shape {shape} does not match the model's {want}")
    if shape[0] > max_batch:
        raise ProtocolError(413, f"batch of {shape[0]} exceeds the limit of {max_batch}")
    count = int(np.prod(shape))
    params = tensor.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if size != count * 4 or len(binary) != size:
            raise ProtocolError(400, f"binary data of {len(binary)} bytes does not hold {count} FP32 values")
        array = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        data = tensor.get("data")
        if data is None:
            raise ProtocolError(400, "input has neither 'data' nor binary data")
        try:
            array = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise ProtocolError(400, "'data' must hold numbers only") from None
        if array.size != count:
            raise ProtocolError(400, f"'data' holds {array.size} values, shape {shape} needs {count}")
        array = array.reshape(shape)
    if not np.isfinite(array).all():
        raise ProtocolError(400, "input holds NaN or infinite values")
    outputs = request.get("outputs") or []
    binary_outputs = bool((request.get("parameters") or {}).get("binary_data_output")) or any(
        isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data") for o in outputs)
    return InferRequest({expected["name"]: array}, binary_outputs, request.get("id"))


def build_infer_response(model: str, outputs: dict[str, np.ndarray], binary: bool,
                         request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of a v2 infer response."""
    described, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array, dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    head = {"model_name": model, "model_version": "1", "outputs": described}
    if request_id is not None:
        head["id"] = request_id
    header = json.dumps(head).encode()
    if not binary:
        return header, {}
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}
