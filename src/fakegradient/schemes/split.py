"""Split inference (``device-head``): the cloud serves the trunk's features (B, D), the device keeps the head
(:class:`~fakegradient.device_head.DeviceHead`) and computes the logits itself. Nothing is random; the cutting
is :mod:`fakegradient.split`. Torch is imported when a model is protected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..device_head import DeviceHead
from . import register
from .base import Capabilities, Scheme

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True, eq=False, repr=False)
class DeviceHeadScheme(Scheme):
    name: str = "device-head"
    display: str = "Device Head (split inference)"
    help: str = ("split inference: the cloud serves the features, the device keeps the head (W, b) and computes "
                 "the logits")
    capabilities: Capabilities = Capabilities(serves="features", head_rows=False, random=False)
    secret_type: type[DeviceHead] = DeviceHead

    def protect(self, model: nn.Module, *, head: str | None = None, example_input: torch.Tensor | None = None,
                seed: int | None = None, labels: Sequence[str] | None = None) -> tuple[nn.Module, DeviceHead]:
        """``(trunk, device_head)``: the trunk (a copy, eval mode) returns the features (B, D) the head consumed;
        ``device_head.decrypt(features)`` gives the logits (B, N), the model's up to float rounding. ``seed``
        fixes only the fingerprint key (nothing else is random)."""
        from ..core.fingerprint import keyed_fingerprint, new_fingerprint_key
        from ..split import split_head, trunk_fingerprint

        trunk, weight, bias, name = split_head(model, head, example_input)
        fingerprint_key = new_fingerprint_key(seed)
        secret = DeviceHead(weight.detach().cpu().numpy(), bias.detach().cpu().numpy(), head=name,
                            model_fingerprint=keyed_fingerprint(trunk_fingerprint(trunk), fingerprint_key),
                            labels=labels, fingerprint_key=fingerprint_key)
        return trunk, secret

    def served_digest(self, served: nn.Module, head: str) -> str:
        from ..split import trunk_fingerprint

        return trunk_fingerprint(served)

    def rebuild(self, model: nn.Module, head: str, n_outputs: int) -> nn.Module:
        from torch import nn

        from ..head import check_head, replace_module

        check_head(model, head)
        return replace_module(model, head, nn.Identity())


register(DeviceHeadScheme(), origin=__name__)
