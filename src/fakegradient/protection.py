"""``protect()``: the safe default API over the scheme registry (:mod:`fakegradient.schemes`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import defaults, methods
from .core.fake_rows import check_scale
from .errors import InvalidArgument
from .schemes.base import Secret


def protect(
    model: nn.Module,
    *,
    method: str = "fake-gradient",
    scale: float = defaults.SCALE,
    seed: int | None = None,
    head: str | None = None,
    example_input: torch.Tensor | None = None,
    labels: Sequence[str] | None = None,
    **params: Any,
) -> tuple[nn.Module, Secret]:
    """Return ``(served_model, secret)``; ``model`` itself is never modified.

    With the fake-row schemes (the default, the paper's) the served model is a copy (in eval mode) whose head
    has 2N outputs: the N real ones and N fake ones, in the order given by the secret key;
    ``key.decrypt(outputs)`` returns the original logits up to float rounding (the head is a different GEMM).
    ``method="device-head"`` (split inference) serves the trunk's features (B, D) and the secret is the head.
    ``seed`` makes the secret reproducible for experiments only; it is NOT secure. ``head`` names the
    classification layer when it cannot be found automatically; ``example_input`` is a valid input batch for
    models that do not take (B, 3, 224, 224); ``labels`` (N class names) travel with the secret. ``scale`` (S_a)
    and ``params`` (e.g. ``fake_bias="official"``) go to the schemes that take them (:meth:`Scheme.params`).
    """
    scale = check_scale(scale)
    scheme = methods.scheme(method)
    accepted = scheme.params()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidArgument(f"method {method!r} takes no parameter {', '.join(unknown)}"
                              + (f" (it takes {', '.join(accepted)})" if accepted else ""))
    own = ({"scale": scale} if "scale" in accepted else {}) | params
    return scheme.protect(model, head=head, example_input=example_input, seed=seed, labels=labels, **own)
