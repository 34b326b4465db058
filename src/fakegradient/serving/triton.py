"""Triton model repository export: ``OUT/<name>/1/model.onnx`` + ``config.pbtxt``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic, write_with
from ..errors import FakeGradientError, InvalidArgument
from .onnx_model import load_model_dir

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ {input_dims} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {output_dims} ]
  }}
]
dynamic_batching {{ }}
{parameters}"""
PARAMETER = """parameters {{
  key: "{key}"
  value: {{ string_value: "{value}" }}
}}
"""
TRITON_PARAMETERS = ("fingerprint", "preprocess")  # what the device client needs (minimal public metadata)


def triton_parameters(parameters: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Public model parameters as Triton's config shows them: strings as they are, the rest JSON-encoded."""
    return {k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in parameters.items()}


def _pbtxt_string(text: str) -> str:
    """``text`` escaped for a protobuf text-format string literal."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def triton_config(model, name: str, max_batch: int) -> str:
    """config.pbtxt for a served model (batch dimension implicit, as Triton expects), with the parameters the
    device client needs (fingerprint, preprocessing as JSON): Triton shows them in the model's config."""
    published = {k: v for k, v in model.parameters().items() if k in TRITON_PARAMETERS}
    parameters = "".join(PARAMETER.format(key=key, value=_pbtxt_string(entry["string_value"]))
                         for key, entry in triton_parameters(published).items())
    return CONFIG.format(name=name, max_batch=max_batch, input=model.input_name, output=model.output_name,
                         input_dims=", ".join(map(str, model.input_shape[1:])),
                         output_dims=", ".join(map(str, model.output_shape[1:])), parameters=parameters)


def export_triton(model_dir: Path, out: Path, name: str | None = None, max_batch: int = 64) -> Path:
    """Write the repository; returns the path of the copied model.onnx."""
    model = load_model_dir(model_dir, name)  # refuses folders holding a key
    if max_batch < 1:
        raise InvalidArgument(f"--max-batch must be >= 1, got {max_batch}")
    if model.input_shape[0] != -1 or model.output_shape[0] != -1:
        raise FakeGradientError("the ONNX model needs a dynamic batch dimension for Triton's batching")
    version = Path(out) / model.name / "1"
    try:
        version.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FakeGradientError(f"cannot create {version}: {exc.strerror or exc}") from None
    target = version / "model.onnx"
    write_with(target, lambda tmp: shutil.copyfile(model.path, tmp))
    write_bytes_atomic(version.parent / "config.pbtxt", triton_config(model, model.name, max_batch).encode())
    return target
