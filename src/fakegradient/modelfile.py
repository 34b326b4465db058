"""The cloud folder: ``model.onnx`` (any ``nn.Module``; what the server runs) and, for models of the
registry, ``model.pt`` (a state dict plus what rebuilds it). :func:`write_bundle` writes both.

No file holds key material: the permutation exists only as the order of the head's rows (for a split trunk,
the head is not there at all). Their self-description is :mod:`fakegradient.bundle`; each file carries a digest
of the whole model, checked when it is loaded.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import methods
from .atomic import write_with
from .bundle import BUNDLE_VERSION, MODEL_FORMAT, ModelInfo, check_version, to_props
from .errors import FakeGradientError, ModelFileError
from .schemes.base import Secret


def state_digest(state: dict[str, torch.Tensor], info: dict[str, Any]) -> str:
    """Hex SHA-256 of a model.pt's content: ``info`` (canonical JSON) and every tensor's name, dtype, shape and
    bytes, in order. Detects corruption (a zeroed or edited tensor), not a deliberate edit."""
    import json

    digest = hashlib.sha256(b"fakegradient-model-pt-v2\0")
    parts = [json.dumps(info, sort_keys=True, separators=(",", ":")).encode()]
    for name, tensor in state.items():
        values = tensor.detach().cpu().contiguous()
        parts += [name.encode(), f"{values.dtype}:{list(values.shape)}".encode(),
                  values.reshape(-1).view(torch.uint8).numpy().tobytes()]
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def save_protected(path: str | os.PathLike, model: nn.Module, info: ModelInfo) -> None:
    """Write ``model`` (state dict), ``info`` and their digest atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": MODEL_FORMAT, "version": BUNDLE_VERSION, "info": info.to_dict(), "state_dict": state,
               "digest": state_digest(state, info.to_dict())}
    write_with(path, lambda tmp: torch.save(payload, tmp))


def read_info(path: str | os.PathLike) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """Read and validate a protected-model file: (info, state dict); any defect is a one-line
    :class:`ModelFileError`, a file whose tensors or info do not match its digest included."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"no such model file: {path}") from None
    except Exception as exc:  # torch's unpickler raises many types (KeyError, IndexError, …) on a damaged file
        raise ModelFileError(f"{path} is not a readable fakegradient model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a fakegradient model file")
    version = check_version(payload.get("version"), str(path))
    stored, state = payload.get("info"), payload.get("state_dict")
    if not isinstance(stored, dict) or not isinstance(state, dict):
        raise ModelFileError(f"{path}: bad metadata (no info or state dict)")
    if version > 1 and payload.get("digest") != state_digest(state, stored):
        raise ModelFileError(f"{path}: the weights or metadata do not match the digest in the file (corrupted or "
                             "edited); protect the model again")
    return ModelInfo.from_dict(stored, version, str(path)), state


def load_protected(path: str | os.PathLike) -> tuple[nn.Module, ModelInfo]:
    """Rebuild a protected model (eval mode) from its file; refuses a damaged file (digest)."""
    from . import models  # model.pt is for registry models; model.onnx needs no registry

    info, state = read_info(path)
    model = methods.scheme(info.method).rebuild(models.load(info.arch, weights=None, **info.arch_kwargs),
                                                 info.head, info.n_outputs)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not fit model {info.arch!r} ({str(exc)[:200]})") from None
    return model.eval(), info


def export_onnx(path: str | os.PathLike, model: nn.Module, info: ModelInfo, opset: int = 17,
                extra: dict[str, Any] | None = None) -> None:
    """Export to ONNX (input ``input`` (B, C, H, W), output ``info.output`` (B, n_outputs), dynamic batch).

    A fake-row head is a plain Gemm/Conv with permuted rows: no Gather or index constant carries the key. The
    metadata (:func:`fakegradient.bundle.to_props`, ``extra`` public: preprocessing, class names) goes into
    metadata_props, then the digest of the whole model (``fakegradient.digest``, :mod:`.integrity`).
    """
    import onnx

    from .integrity import seal

    example = torch.zeros(1, *info.input_size)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval().cpu(), (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=[info.output],
                              dynamic_axes={"input": {0: "batch"}, info.output: {0: "batch"}})
        graph = onnx.load(str(tmp))
        for name, value in to_props(info, extra).items():
            graph.metadata_props.add(key=name, value=value)
        seal(graph, Path(tmp).parent)  # last: the whole-model digest the server checks on load
        onnx.save(graph, str(tmp))

    write_with(path, write)


def write_bundle(folder: str | os.PathLike, protected: nn.Module, secret: Secret, *, input_size: list[int],
                 arch: str | None = None, arch_kwargs: dict[str, Any] | None = None, weights: str | None = None,
                 extra: dict[str, Any] | None = None, onnx: bool = True) -> list[Path]:
    """Write the cloud folder of ``protected`` (made with ``secret``); returns the paths written.

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
    scheme = methods.scheme(secret.method)
    info = ModelInfo(arch=arch or type(protected).__name__, head=secret.head, n_real=secret.n_real,
                     fingerprint=secret.model_fingerprint, n_outputs=secret.n_outputs,
                     input_size=list(input_size), arch_kwargs=dict(arch_kwargs or {}), weights=weights,
                     method=secret.method, output=scheme.output_name, extra=dict(extra or {}))
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
