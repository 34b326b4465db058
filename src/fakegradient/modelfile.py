"""The cloud folder: ``model.onnx`` (any ``nn.Module``; what the server runs) and, for models of the
registry, ``model.pt`` (a state dict plus what rebuilds it). :func:`write_bundle` writes both.

No file holds key material: the permutation exists only as the order of the head's rows. A ``device-head``
bundle holds the trunk only (output: the features (B, D)); its head stays on the device.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_with
from .core.fingerprint import head_fingerprint
from .device_head import DeviceHead
from .errors import FakeGradientError, ModelFileError
from .head import build_head, check_head, head_parameters, replace_module
from .key import Key
from .split import trunk_fingerprint

MODEL_FORMAT = "fakegradient-model"
MODEL_VERSION = 1


@dataclass
class ModelInfo:
    """What a protected-model file says about itself (public: nothing here reveals the key)."""

    arch: str  # a registry name (model.pt can be reloaded), else the module's class name
    head: str
    n_real: int
    fingerprint: str
    input_size: list[int] = field(default_factory=lambda: [3, 224, 224])
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    method: str = "fake-gradient"
    extra: dict[str, Any] = field(default_factory=dict)  # public, for clients: preprocess, categories
    n_features: int | None = None  # D, for a split trunk (device-head): the width of its output

    @property
    def split(self) -> bool:
        """A trunk serving features (``device-head``), not a model with a protected head."""
        return self.n_features is not None

    @property
    def n_outputs(self) -> int:
        return self.n_features if self.n_features is not None else 2 * self.n_real


def model_fingerprint(model: nn.Module, head: str) -> str:
    """Fingerprint of the (protected) head called ``head`` in ``model``."""
    return head_fingerprint(*head_parameters(check_head(model, head)))


def served_fingerprint(model: nn.Module, info: ModelInfo) -> str:
    """The fingerprint of a served model as ``info`` describes it: its protected head's, or a split trunk's."""
    return trunk_fingerprint(model) if info.split else model_fingerprint(model, info.head)


def save_protected(path: str | os.PathLike, model: nn.Module, info: ModelInfo) -> None:
    """Write ``model`` (state dict) and ``info`` atomically; checks the fingerprint first."""
    if served_fingerprint(model, info) != info.fingerprint:
        raise FakeGradientError("model head does not match info.fingerprint")
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "info": asdict(info),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    write_with(path, lambda tmp: torch.save(payload, tmp))


def read_info(path: str | os.PathLike) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """Read and validate a protected-model file: (info, state dict)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"no such model file: {path}") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable fakegradient model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a fakegradient model file")
    if payload.get("version") != MODEL_VERSION:
        raise ModelFileError(f"{path}: unsupported model file version {payload.get('version')!r}")
    try:
        info = ModelInfo(**payload["info"])
    except TypeError as exc:
        raise ModelFileError(f"{path}: bad metadata ({exc})") from None
    return info, payload["state_dict"]


def load_protected(path: str | os.PathLike) -> tuple[nn.Module, ModelInfo]:
    """Rebuild a protected model (eval mode) from its file; refuses a file whose head was edited."""
    from . import models  # model.pt is for registry models; model.onnx needs no registry

    info, state = read_info(path)
    model = models.load(info.arch, weights=None, **info.arch_kwargs)
    layer = check_head(model, info.head)
    weight, bias = head_parameters(layer)
    placeholder = torch.zeros(info.n_outputs, weight.shape[1], dtype=weight.dtype)
    new = nn.Identity() if info.split else build_head(layer, placeholder, placeholder[:, 0])
    model = replace_module(model, info.head, new)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit model {info.arch!r} ({str(exc)[:200]})") from None
    if served_fingerprint(model, info) != info.fingerprint:
        raise ModelFileError(f"{path}: head weights do not match the file's fingerprint (edited?)")
    return model.eval(), info


def export_onnx(path: str | os.PathLike, model: nn.Module, info: ModelInfo, opset: int = 17,
                extra: dict[str, Any] | None = None) -> None:
    """Export to ONNX (input ``input`` (B, C, H, W), output ``logits`` (B, 2N), dynamic batch; a split trunk's
    output is ``features`` (B, D), and its metadata names the method).

    The graph computes the protected head as a plain Gemm/Conv with permuted rows: no
    Gather or index constant carries the key. The fingerprint and ``extra`` (public: e.g.
    preprocessing, class names; JSON-encoded) are stored in metadata_props as ``fakegradient.*``, then the
    digest of the whole model (``fakegradient.digest``, :mod:`.serving.integrity`).
    """
    import onnx

    from .integrity import seal

    example = torch.zeros(1, *info.input_size)
    output = "features" if info.split else "logits"

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval().cpu(),
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=[output],
                dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        props = {"fingerprint": info.fingerprint, "arch": info.arch, "n_outputs": str(info.n_outputs)}
        props |= {"method": info.method} if info.split else {}  # the server checks a trunk by its digest only
        props |= {k: json.dumps(v) for k, v in (extra or {}).items()}
        for name, value in props.items():
            graph.metadata_props.add(key=f"fakegradient.{name}", value=value)
        seal(graph, Path(tmp).parent)  # last: the whole-model digest the server checks on load
        onnx.save(graph, str(tmp))

    write_with(path, write)


def write_bundle(folder: str | os.PathLike, protected: nn.Module, key: Key | DeviceHead, *, input_size: list[int],
                 arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, weights: str | None = None,
                 extra: dict[str, Any] | None = None, onnx: bool = True) -> list[Path]:
    """Write the cloud folder of ``protected`` (made with ``key``, or the trunk split from ``key``, a
    :class:`DeviceHead`); returns the paths written.

    ``model.onnx`` works for any module: ``input_size`` (C, H, W) is its input without the batch,
    ``extra`` public metadata (``preprocess``, ``categories``) for clients. ``model.pt`` is written when
    ``arch`` names a registry model (``arch_kwargs`` rebuild it). Each file is written atomically; if one
    fails, those already written are removed.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FakeGradientError(f"cannot create {folder}: {exc.strerror or exc}") from None
    info = ModelInfo(arch=arch or type(protected).__name__, head=key.head, n_real=key.n_real,
                     fingerprint=key.model_fingerprint, input_size=list(input_size),
                     arch_kwargs=dict(arch_kwargs or {}), weights=weights, method=key.method,
                     extra=dict(extra or {}),
                     n_features=key.n_features if isinstance(key, DeviceHead) else None)
    writers = [("model.pt", lambda path: save_protected(path, protected, info))] if arch else []
    if onnx:
        writers.append(("model.onnx", lambda path: export_onnx(path, protected, info, extra=extra)))
    written: list[Path] = []
    try:
        for name, write in writers:
            write(folder / name)
            written.append(folder / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
