"""Classification on this machine: a cloud folder's model.pt (torch) or model.onnx (ONNX Runtime, as the server
runs it) with the device's secret, through the same numpy core and preprocessing as the device client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classify import Classification, Failure, stream
from .errors import FakeGradientError
from .schemes.base import Secret


@dataclass
class LocalModel:
    """``infer``: (B, C, H, W) float32 → served outputs (B, K); the published ``fingerprint``, the preprocessing
    ``spec`` and the class names the file records (None: unknown)."""

    infer: Callable[[np.ndarray], np.ndarray]
    fingerprint: str
    spec: dict[str, Any]
    categories: list[str] | None


def model_file(path: Path) -> Path:
    """A cloud folder's model file (model.pt, else model.onnx), or ``path`` itself."""
    if not path.is_dir():
        return path
    for name in ("model.pt", "model.onnx"):
        if (path / name).is_file():
            return path / name
    raise FakeGradientError(f"{path} holds no model.pt or model.onnx (make them with `fakegradient protect`)")


def open_model(path: Path) -> LocalModel:
    """The model in ``path`` (a folder, model.pt or model.onnx), checked against its digest."""
    from .serving.client import check_spec

    path = model_file(path)
    if path.suffix == ".onnx":
        from .serving.onnx_model import load_model_dir

        if path.name != "model.onnx":
            raise FakeGradientError(f"{path}: expected a cloud folder's model.onnx")
        served = load_model_dir(path.parent)
        params = served.parameters()
        spec, fingerprint, categories = params.get("preprocess"), params["fingerprint"], params.get("categories")
        infer = served.infer
    else:
        import torch

        from .classify import model_outputs
        from .modelfile import load_protected

        model, info = load_protected(path)  # refuses a damaged file (its digest)
        fingerprint = info.fingerprint
        spec, categories = info.extra.get("preprocess"), info.extra.get("categories")
        if spec is None:  # a file from before the preprocessing was recorded: its named weights' preset
            spec, categories = _weights_preprocessing(info)

        def infer(batch: np.ndarray) -> np.ndarray:
            return model_outputs(model, torch.from_numpy(batch))

    if spec is None:
        raise FakeGradientError(f"{path} records no preprocessing: protect the model again (with --weights, or "
                                "--input-size --mean --std)")
    return LocalModel(infer, fingerprint, check_spec(spec), categories if isinstance(categories, list) else None)


def classify_local(path: Path, secret: Secret, images: Sequence[str | Path], *, k: int = 5,
                   batch_size: int = 16) -> Iterator[Classification | Failure]:
    """Each image's real top-k through the protected model in ``path`` and ``secret`` (checked against the
    model's fingerprint first), as :func:`fakegradient.classify.stream` yields them. Class names: the secret's,
    else the model file's."""
    from .serving.client import preprocess

    model = open_model(path)
    secret.check_fingerprint(model.fingerprint)
    categories = list(secret.labels) if secret.labels else model.categories
    return stream(images, lambda image: preprocess(image, model.spec), lambda batch: model.infer(np.stack(batch)),
                  secret, k=k, batch_size=batch_size, categories=categories)


def _weights_preprocessing(info: Any) -> tuple[dict | None, list | None]:
    from . import models

    try:
        weights = models.get_weights(info.arch, info.weights) if info.weights else None
    except FakeGradientError:
        weights = None
    if weights is None:
        return None, None
    return models.preprocess_spec(weights), weights.meta.get("categories")
