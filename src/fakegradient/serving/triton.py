"""Triton model repository export: ``OUT/<name>/1/model.onnx`` + ``config.pbtxt``."""

from __future__ import annotations

import shutil
from pathlib import Path

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
parameters {{
  key: "fingerprint"
  value: {{ string_value: "{fingerprint}" }}
}}
"""


def triton_config(model, name: str, max_batch: int) -> str:
    """config.pbtxt for a served model (batch dimension implicit, as Triton expects)."""
    fingerprint = model.metadata.get("fakegradient.fingerprint", "")
    return CONFIG.format(name=name, max_batch=max_batch, input=model.input_name, output=model.output_name,
                         input_dims=", ".join(map(str, model.input_shape[1:])),
                         output_dims=", ".join(map(str, model.output_shape[1:])), fingerprint=fingerprint)


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
