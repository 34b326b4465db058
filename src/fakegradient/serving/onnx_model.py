"""A served model: an ONNX file run by ONNX Runtime, with the public metadata the export stored."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FakeGradientError
from ..key import KEY_FORMAT

KEY_MARKER = f'"format": "{KEY_FORMAT}"'.encode()  # as Key.save writes it


@dataclass
class ServedModel:
    name: str
    path: Path
    session: Any
    input_name: str
    input_shape: list[int]  # -1 for the batch
    output_name: str
    output_shape: list[int]
    metadata: dict[str, str] = field(default_factory=dict)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def parameters(self) -> dict[str, Any]:
        """Public extras for the client: fingerprint, preprocessing, class names (never a key)."""
        out: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if key.startswith("fakegradient."):
                short = key.removeprefix("fakegradient.")
                out[short] = json.loads(value) if short in ("preprocess", "categories") else value
        return out


def load_model_dir(model_dir: Path, name: str | None = None, threads: int = 0) -> ServedModel:
    """Open ``model_dir/model.onnx``. Refuses a folder that holds a key file: keys stay on the device."""
    import onnxruntime as ort

    model_dir = Path(model_dir)
    path = model_dir / "model.onnx"
    if not path.is_file():
        raise FakeGradientError(f"no model.onnx in {model_dir} (make one with `fakegradient protect`)")
    for candidate in model_dir.iterdir():
        if candidate.is_file() and candidate.stat().st_size < 10_000_000 and candidate.suffix != ".onnx":
            with open(candidate, "rb") as handle:
                if KEY_MARKER in handle.read():
                    raise FakeGradientError(f"{candidate} is a key file: keys must never reach the server")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise FakeGradientError(f"cannot load {path}: {exc}") from None
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    meta = dict(session.get_modelmeta().custom_metadata_map)

    def dims(shape) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape]

    return ServedModel(name or model_dir.resolve().name, path, session, inp.name, dims(inp.shape),
                       out.name, dims(out.shape), meta)
