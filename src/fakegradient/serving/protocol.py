"""KServe / Triton Open Inference Protocol v2 over REST: request parsing and response building.

Pure functions on bytes and numpy arrays. Supports JSON tensors and the binary tensor data
extension (``Inference-Header-Content-Length``) that ``tritonclient`` uses by default.
Bad requests raise :class:`InvalidInput` (400) or :class:`PayloadTooLarge` (413).
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInput, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.float32}


MAX_LENGTH_DIGITS = 20  # a byte count: 2**64 has 20 digits (and int() refuses over 4300)


@dataclass
class InferRequest:
    """A parsed infer request: ``inputs`` {name: (B, ...) array}, whether the answer is wanted as binary
    tensors, the client's id, and the outputs it names (none: all)."""

    inputs: dict[str, np.ndarray]
    binary_outputs: bool
    request_id: str | None
    outputs: tuple[str, ...] = ()


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int (None when absent)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {reprlib.repr(value)}")
    if len(value) > MAX_LENGTH_DIGITS:
        raise InvalidInput(f"{HEADER_LENGTH} of {len(value)} digits is no length (at most {MAX_LENGTH_DIGITS})")
    return int(value)


def _parameters(value: Any, what: str) -> dict[str, Any]:
    """A v2 ``parameters`` object (string keys, scalar values), {} if absent; 400 otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
        raise InvalidInput(f"{what} must be an object of strings, numbers and booleans")
    return value


def _flag(params: dict[str, Any], name: str) -> bool:
    """The boolean parameter ``name`` (False if absent); 400 if it is not a boolean."""
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {name!r} must be true or false, got {reprlib.repr(value)}")
    return value


def _load_json(data: bytes) -> Any:
    """The JSON document in ``data``; 400 if it is not valid JSON (pydantic-core's parser: fast, and it
    refuses nesting deeper than 200 and integers of over 4300 digits instead of crashing)."""
    from pydantic_core import from_json

    try:
        return from_json(data)
    except ValueError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def parse_infer_request(body: bytes, header_length: int | None, expected: dict[str, Any],
                        max_batch: int) -> InferRequest:
    """Parse and validate a v2 infer request against ``expected`` = {name, shape (with -1 batch)}."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    json_part, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    request = _load_json(json_part)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    if len(request["inputs"]) != 1:
        raise InvalidInput(f"the model takes exactly one input, got {len(request['inputs'])}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object")
    shape = tensor.get("shape")
    count = check_input(tensor.get("name"), tensor.get("datatype"), shape, expected, max_batch)
    params = _parameters(tensor.get("parameters"), "the input's 'parameters'")
    if "binary_data_size" in params:
        if "data" in tensor:
            raise InvalidInput("an input has both 'data' and 'binary_data_size': send one of them")
        size = params["binary_data_size"]
        if type(size) is not int or size != count * 4 or len(binary) != size:
            raise InvalidInput(f"binary data of {len(binary)} bytes does not hold {count} FP32 values")
        array = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        array = _numbers(tensor.get("data"), shape, count)
    check_values(array)
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    binary_outputs = _flag(_parameters(request.get("parameters"), "the request's 'parameters'"),
                           "binary_data_output")
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput("each output must be an object with a 'name'")
        params = _parameters(output.get("parameters"), "an output's 'parameters'")
        binary_outputs |= _flag(params, "binary_data")
    return InferRequest({expected["name"]: array}, binary_outputs, request_id,
                        tuple(output["name"] for output in outputs))


def check_outputs(requested: tuple[str, ...], served: list[str]) -> None:
    """400 if a request names an output the model does not have."""
    unknown = [name for name in requested if name not in served]
    if unknown:
        raise InvalidInput(f"unknown output {reprlib.repr(unknown[0])}; the model's outputs: {served}")


def check_input(name: Any, datatype: Any, shape: Any, expected: dict[str, Any], max_batch: int) -> int:
    """Check an input's ``name``, ``datatype`` and ``shape`` (a list of ints) against ``expected`` =
    {name, shape (-1: the batch)}; returns its number of values. For every transport's parser."""
    if name != expected["name"]:
        raise InvalidInput(f"unknown input {reprlib.repr(name)}; the model's input is {expected['name']!r}")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"datatype {reprlib.repr(datatype)} not supported; send FP32")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise InvalidInput("'shape' must be a list of non-negative integers")
    want = expected["shape"]
    if len(shape) != len(want) or any(w != -1 and w != d for w, d in zip(want, shape)) or shape[0] < 1:
        raise InvalidInput(f"input shape {reprlib.repr(shape)} does not match the model's {want}")
    if shape[0] > max_batch:
        raise PayloadTooLarge(f"batch of {shape[0]} exceeds the limit of {max_batch}")
    return math.prod(shape)


def check_values(array: np.ndarray) -> None:
    """400 unless every value of an input is finite."""
    if not np.isfinite(array).all():
        raise InvalidInput("input holds NaN or infinite values")


def _numbers(data: Any, shape: list[int], count: int) -> np.ndarray:
    """JSON ``data`` (flat or nested numbers) as an FP32 array of ``shape``."""
    if data is None:
        raise InvalidInput("input has neither 'data' nor binary data")
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        raise InvalidInput("'data' must hold numbers only")
    if raw.size != count:
        raise InvalidInput(f"'data' holds {raw.size} values, shape {shape} needs {count}")
    with np.errstate(over="ignore"):  # out of FP32 range becomes inf, refused below
        return raw.astype(np.float32).reshape(shape)


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
