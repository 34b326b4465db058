"""Split inference (the ``device-head`` scheme): the cloud runs the trunk up to the features the head
consumes, the device keeps the head and computes the real logits ``features @ W.T + b`` itself.

Torch side only: :func:`split_head` cuts a classifier in two, :func:`trunk_fingerprint` names the trunk the
device's head file belongs to. The device side (numpy only) is :mod:`fakegradient.device_head`.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from .errors import HeadNotFound
from .head import as_tensor_model, head_parameters, model_output, probe_input, replace_module, trace_head

SPLIT_RTOL = SPLIT_ATOL = 1e-4  # features @ W.T + b vs the model's own logits: a different GEMM, rounding only


def split_head(model: nn.Module, head: str | None = None,
               example_input: torch.Tensor | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """(trunk, weight (N, D), bias (N,), head name): trunk is a deep copy of ``model`` whose head is replaced by
    an identity so it returns the features (B, D) the head consumed; head found as head.py finds it (Linear or
    1x1 Conv).

    ``model`` itself is never modified; the trunk is in eval mode. A model returning a Hugging Face
    ``ModelOutput`` is wrapped as :func:`fakegradient.protect` wraps it (head ``model.<name>``). Raises
    :class:`HeadNotFound` unless ``trunk(x) @ W.T + b`` gives the model's logits on the probe input (within
    :data:`SPLIT_RTOL`/:data:`SPLIT_ATOL`).
    """
    trunk = copy.deepcopy(model).eval()
    x = probe_input(trunk, example_input)
    wrapped = as_tensor_model(trunk, x)
    if wrapped is not trunk:
        trunk, head = wrapped, None if head is None else f"model.{head}"
    trace = trace_head(trunk, x, head)
    weight, bias = (t.clone() for t in head_parameters(trunk.get_submodule(trace.head)))
    trunk = replace_module(trunk, trace.head, nn.Identity())
    _check_split(trunk, weight, bias, x, trace.output, trace.head)
    return trunk, weight, bias, trace.head


@torch.no_grad()
def _check_split(trunk: nn.Module, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor,
                 expected: torch.Tensor, name: str) -> None:
    features = model_output(trunk, x)
    if features.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise HeadNotFound(f"without its head {name!r} the model returns {tuple(features.shape)}, not the "
                           f"(batch, {weight.shape[1]}) features the head consumes; pass head= to choose another")
    logits = features @ weight.T + bias
    if not torch.allclose(logits, expected.reshape(logits.shape), rtol=SPLIT_RTOL, atol=SPLIT_ATOL):
        raise HeadNotFound(f"layer {name!r} does not produce the model's logits from the trunk's output; "
                           "pass head= to choose another")


def trunk_fingerprint(trunk: nn.Module) -> str:
    """Hex SHA-256 of the trunk's state dict (names, dtypes, shapes and values, in order): the served model a
    device's head file belongs to. Public data: it reveals nothing about the head."""
    digest = hashlib.sha256(b"fakegradient-trunk-v1\0")
    for name, tensor in trunk.state_dict().items():
        values = tensor.detach().cpu().contiguous()
        for part in (name.encode(), f"{values.dtype}:{list(values.shape)}".encode(),
                     values.reshape(-1).view(torch.uint8).numpy().tobytes()):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()
