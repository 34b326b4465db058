"""Finding and replacing a classifier's head: the layer whose outputs are the model's logits.

One uniform door for every architecture: an explicit ``head=`` name, else timm's
``get_classifier()``, else tracing which ``nn.Linear`` (or 1×1 ``nn.Conv2d``) produced the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .errors import FakeGradientError, HeadNotFound

HEAD_TYPES = (nn.Linear, nn.Conv2d)


@dataclass
class Trace:
    """Result of one traced forward pass: the head's name and the model's output (B, N)."""

    head: str
    output: torch.Tensor


class Logits(nn.Module):
    """A model whose forward returns a ``ModelOutput`` (Hugging Face), as one returning its logits
    (B, C, H, W) → (B, N): ONNX export, serving and tracing then see a plain tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def as_tensor_model(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model``, wrapped in :class:`Logits` when its output on ``x`` is a mapping with ``logits``."""
    with torch.no_grad():
        out = _run(model, x)
    return Logits(model) if isinstance(out, Mapping) and "logits" in out else model


def probe_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    """``example_input`` or a fixed random (2, 3, 224, 224) batch on the model's device."""
    if example_input is not None:
        return example_input
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, 3, 224, 224), generator=generator).to(device)


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits a classifier returns for ``x`` (first element of tuple/namedtuple outputs, ``logits`` of
    a Hugging Face ``ModelOutput``)."""
    out = _run(model, x)
    if isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise HeadNotFound("the model does not return a (batch, classes) tensor; pass head=")
    return out


def _run(model: nn.Module, x: torch.Tensor) -> object:
    try:
        return model(x)
    except Exception as exc:  # the user's model rejected the probe
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FakeGradientError(
            f"could not run the model on an input of shape {tuple(x.shape)} ({first}); "
            "pass example_input= (CLI: --input-size) with a valid input batch"
        ) from None


def head_name_of(model: nn.Module, layer: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if module is layer:
            return name
    return None


def check_head(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name``, if it is a supported head (Linear or 1×1 Conv2d)."""
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise HeadNotFound(f"the model has no submodule {name!r} (head=)") from None
    if isinstance(layer, nn.Linear):
        return layer
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        return layer
    raise HeadNotFound(
        f"head {name!r} is a {type(layer).__name__}; a head must be nn.Linear or a 1x1 nn.Conv2d"
    )


@torch.no_grad()
def trace_head(model: nn.Module, x: torch.Tensor, head: str | None = None) -> Trace:
    """Run ``model`` (eval mode) on ``x`` and name the layer whose output is the logits."""
    if head is not None:
        check_head(model, head)
        return Trace(head, model_output(model, x))
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        layer = get_classifier()
        name = head_name_of(model, layer) if isinstance(layer, nn.Linear) else None
        if name:
            return Trace(name, model_output(model, x))

    records: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: records.append((name, out)))
        for name, module in model.named_modules()
        if isinstance(module, HEAD_TYPES)
    ]
    try:
        out = model_output(model, x)
    finally:
        for hook in hooks:
            hook.remove()
    flat = out.reshape(out.shape[0], -1)
    for name, produced in reversed(records):
        if not isinstance(produced, torch.Tensor) or produced.numel() != out.numel():
            continue
        if isinstance(model.get_submodule(name), nn.Conv2d) and produced.shape[2:] != (1, 1):
            continue
        if torch.equal(produced.reshape(flat.shape), flat):
            check_head(model, name)
            return Trace(name, out)
    raise HeadNotFound(
        "no nn.Linear (or 1x1 nn.Conv2d) produces the model's output directly; "
        "pass head='<module name>' (CLI: --head) to choose the classification layer"
    )


def head_parameters(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a head as (N, D) and (N,) tensors (a missing bias reads as zeros)."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    bias = layer.bias
    bias = torch.zeros_like(weight[:, 0]) if bias is None else bias.detach()
    return weight, bias


def build_head(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A layer like ``layer`` with the rows (M, D) and bias (M,) given."""
    n_out = weight.shape[0]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, n_out, bias=True)
    else:
        new = nn.Conv2d(layer.in_channels, n_out, kernel_size=1, bias=True)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight.reshape(new.weight.shape))
        new.bias.copy_(bias)
    return new.train(layer.training)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule ``name`` of ``model``; returns the model, which is ``new``
    itself when ``name`` is ``""`` (the head is the whole model, e.g. a bare ``nn.Linear``)."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model
