"""The device client: preprocess with Pillow + numpy, call a v2 server, decrypt with the key.

Imports no torch. Preprocessing reproduces torchvision's ImageClassification preset (resize the
shorter side with PIL, centre crop with torchvision's rounding, scale to [0, 1], normalise).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..classify import predictions
from ..data import open_rgb
from ..errors import FakeGradientError, KeyMismatch
from ..key import Key
from .protocol import HEADER_LENGTH

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def preprocess(path: str | Path, spec: dict[str, Any]) -> np.ndarray:
    """One image → (3, crop, crop) float32, as torchvision's preset ``spec`` would make it."""
    image = open_rgb(path)
    size, crop = int(spec["resize"]), int(spec["crop"])
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize(new_size, _RESAMPLE[spec.get("interpolation", "bilinear")])
    width, height = image.size
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    array = np.asarray(image, dtype=np.uint8)[top : top + crop, left : left + crop]
    array = array.astype(np.float32) / 255.0
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return ((array - mean) / std).transpose(2, 0, 1).copy()


@dataclass
class ServerModel:
    name: str
    input_name: str
    output_name: str
    parameters: dict[str, Any]


class InferenceClient:
    """A minimal Open Inference Protocol v2 REST client (binary tensor data extension)."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (json.JSONDecodeError, AttributeError):
                pass
            raise FakeGradientError(f"server answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FakeGradientError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None

    def model(self, name: str | None = None) -> ServerModel:
        """Metadata of model ``name`` (or the only one served)."""
        if name is None:
            name = self._only_model()
        body, _ = self._call(f"/v2/models/{name}")
        meta = json.loads(body)
        return ServerModel(meta["name"], meta["inputs"][0]["name"], meta["outputs"][0]["name"],
                           meta.get("parameters") or {})

    def _only_model(self) -> str:
        body, _ = self._call("/v2/repository/index", b"{}", {"Content-Type": "application/json"})
        names = [entry["name"] for entry in json.loads(body)]
        if len(names) != 1:
            raise FakeGradientError(f"the server has models {names}: name the one to use (--model-name)")
        return names[0]

    def max_batch(self, name: str) -> int | None:
        """The server's batch limit, from Triton's config endpoint (our server has it too)."""
        try:
            body, _ = self._call(f"/v2/models/{name}/config")
            return int(json.loads(body).get("max_batch_size")) or None
        except (FakeGradientError, TypeError, ValueError):
            return None

    def infer(self, model: ServerModel, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 → (B, outputs) float32, tensors sent and received as binary data."""
        data = np.ascontiguousarray(batch, dtype="<f4").tobytes()
        header = json.dumps({
            "inputs": [{"name": model.input_name, "shape": list(batch.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": model.output_name, "parameters": {"binary_data": True}}],
        }).encode()
        body, headers = self._call(f"/v2/models/{model.name}/infer", header + data,
                                   {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})
        length = int(headers.get(HEADER_LENGTH, len(body)))
        response = json.loads(body[:length])
        (output,) = response["outputs"]
        if "data" in output:
            return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        return np.frombuffer(body[length:], dtype="<f4").reshape(output["shape"]).copy()


@dataclass
class Classification:
    image: str
    server_top1: int  # the position the cloud saw win (a fake output on a protected model)
    server_top1_is_fake: bool
    topk: list[tuple[int, str, float]]  # (class, label, probability)


def classify(url: str, key: Key, images: list[str | Path], *, model_name: str | None = None, k: int = 5,
             batch_size: int = 16) -> list[Classification]:
    """Classify image files through the server and decrypt with ``key``."""
    client = InferenceClient(url)
    model = client.model(model_name)
    fingerprint = model.parameters.get("fingerprint")
    if fingerprint is None:
        raise KeyMismatch(f"model {model.name!r} publishes no fakegradient fingerprint: is it protected?")
    key.check_fingerprint(fingerprint)
    spec = model.parameters.get("preprocess")
    if spec is None:
        raise FakeGradientError(f"model {model.name!r} publishes no preprocessing parameters")
    categories = model.parameters.get("categories") or []
    batch_size = min(batch_size, client.max_batch(model.name) or batch_size)
    results = []
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        batch = np.stack([preprocess(p, spec) for p in paths])
        for path, pred in zip(paths, predictions(key, client.infer(model, batch), k)):
            results.append(Classification(
                Path(path).name, pred.encrypted_top1, pred.encrypted_top1_is_fake,
                [(c, categories[c] if c < len(categories) else f"class {c}", p) for c, p in pred.topk]))
    return results
