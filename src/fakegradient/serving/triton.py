"""Triton model repository export: ``OUT/<name>/1/model.onnx`` + ``config.pbtxt``.

Two backends: ``onnxruntime`` (Triton's ONNX Runtime backend runs model.onnx: full Triton installs) and
``python`` (Triton's Python backend runs ``1/model.py``, which runs model.onnx with ONNX Runtime: where the
onnxruntime backend is absent, as in the ``tritonserver`` that ``nvidia-pytriton`` bundles).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic, write_with
from ..errors import FakeGradientError, InvalidArgument
from .onnx_model import load_model_dir

BACKENDS = {"onnxruntime": 'platform: "onnxruntime_onnx"',
            # one instance: ONNX Runtime uses the cores itself (intra-op threads)
            "python": 'backend: "python"\ninstance_group [ { kind: KIND_CPU, count: 1 } ]'}
CONFIG = """name: "{name}"
{backend}
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


def triton_config(model, name: str, max_batch: int, backend: str = "onnxruntime") -> str:
    """config.pbtxt for a served model (batch dimension implicit, as Triton expects) run by ``backend`` (a key
    of BACKENDS), with the parameters the device client needs (fingerprint, preprocessing as JSON): Triton
    shows them in the model's config."""
    published = {k: v for k, v in model.parameters().items() if k in TRITON_PARAMETERS}
    parameters = "".join(PARAMETER.format(key=key, value=_pbtxt_string(entry["string_value"]))
                         for key, entry in triton_parameters(published).items())
    return CONFIG.format(name=name, backend=BACKENDS[backend], max_batch=max_batch, input=model.input_name, output=model.output_name,
                         input_dims=", ".join(map(str, model.input_shape[1:])),
                         output_dims=", ".join(map(str, model.output_shape[1:])), parameters=parameters)


def python_model(model_sha256: str) -> str:
    """Triton Python backend ``model.py`` running the model.onnx beside it (of SHA-256 ``model_sha256``)."""
    return MODEL_PY.replace("@SHA256@", model_sha256)


def export_triton(model_dir: Path, out: Path, name: str | None = None, max_batch: int = 64,
                  backend: str = "onnxruntime") -> Path:
    """Write the repository for ``backend`` (a key of BACKENDS); returns the path of the copied model.onnx."""
    if backend not in BACKENDS:
        raise InvalidArgument(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if max_batch < 1:
        raise InvalidArgument(f"--max-batch must be >= 1, got {max_batch}")
    model = load_model_dir(model_dir, name)  # refuses folders holding a key
    if model.input_shape[0] != -1 or model.output_shape[0] != -1:
        raise FakeGradientError("the ONNX model needs a dynamic batch dimension for Triton's batching")
    version = Path(out) / model.name / "1"
    try:
        version.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FakeGradientError(f"cannot create {version}: {exc.strerror or exc}") from None
    target = version / "model.onnx"
    write_with(target, lambda tmp: shutil.copyfile(model.path, tmp))
    if backend == "python":  # the digest of the bytes copied: model.py refuses any other file
        write_bytes_atomic(version / "model.py", python_model(_sha256(target)).encode())
    else:
        (version / "model.py").unlink(missing_ok=True)  # left by an earlier --backend python export
    write_bytes_atomic(version.parent / "config.pbtxt", triton_config(model, model.name, max_batch, backend).encode())
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# Runs inside Triton's Python backend, with only numpy and onnxruntime: no fakegradient import. The export
# checked the model (fingerprint, digest); this checks that the file Triton loads is the one exported.
MODEL_PY = '''"""Triton Python backend model written by `fakegradient export-triton --backend python`: runs the
model.onnx beside it with ONNX Runtime (CPU). Needs numpy and onnxruntime in the backend's Python."""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_SHA256 = "@SHA256@"  # of the model.onnx exported beside this file


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        with open(path, "rb") as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
            raise pb_utils.TritonModelException(f"{path} is not the model.onnx exported with this model.py "
                                                "(corrupted or replaced); export it again")
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False  # a run's memory goes back when it ends
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        """The requests Triton batched (each of batch >= 1) in one ONNX Runtime run; one response each."""
        # tensors cross by DLPack: the stubs bundled in nvidia-pytriton 0.7 read numpy 2 arrays as 0 bytes
        try:
            arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
            outputs = self.session.run([self.output], {self.input: np.concatenate(arrays)})[0]
        except Exception as exc:  # ONNX Runtime raises its own types: answer each request with the error
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        parts = np.split(outputs, np.cumsum([len(a) for a in arrays])[:-1])
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor.from_dlpack(self.output, np.ascontiguousarray(part))]) for part in parts]
'''
