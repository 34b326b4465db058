"""``protect()``: the safe default API on top of the functional core."""

from __future__ import annotations

import copy
import secrets

import torch
from torch import nn

from . import defaults, methods
from .core.fake_rows import check_scale
from .core.fingerprint import head_fingerprint
from .core.permutation import encrypt_rows, generate_permutation
from .device_head import DeviceHead
from .errors import HeadNotFound
from .head import as_tensor_model, build_head, head_parameters, probe_input, replace_module, trace_head
from .key import Key
from .split import split_head, trunk_fingerprint

METHODS = methods.PROTECTIONS


def make_fake_rows(
    weight: torch.Tensor, bias: torch.Tensor, method: str, scale: float, seed: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake rows (N, D), (N,) for ``method``; ``seed`` (insecure, experiments) fixes random ones."""
    generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    return methods.get(method, protection=True).fake_rows(weight, bias, scale=scale, generator=generator)


def encrypted_head(
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    method: str = "fake-gradient",
    scale: float = defaults.SCALE,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithms 1+2 on a head: (N, D), (N,) → W_en (2N, D), b_en (2N,), permutation (2N,)."""
    fake_w, fake_b = make_fake_rows(weight, bias, method, scale, seed)
    permutation = generate_permutation(2 * weight.shape[0], seed)
    w_en = encrypt_rows(torch.cat([weight, fake_w]), permutation)
    b_en = encrypt_rows(torch.cat([bias, fake_b]), permutation)
    return w_en, b_en, torch.from_numpy(permutation)


def protect(
    model: nn.Module,
    *,
    method: str = "fake-gradient",
    scale: float = defaults.SCALE,
    seed: int | None = None,
    head: str | None = None,
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, Key | DeviceHead]:
    """Return ``(protected_model, key)``; ``model`` itself is never modified.

    The protected model is a copy (in eval mode) whose head has 2N outputs: the N real
    ones and N fake ones, in the order given by the secret key. ``key.decrypt(outputs)``
    returns the original logits up to float rounding (the head is a different GEMM). ``seed`` makes key and fake rows reproducible
    for experiments only; it is NOT secure. ``head`` names the classification layer when
    it cannot be found automatically; ``example_input`` is a valid input batch for models
    that do not take (B, 3, 224, 224). A model returning a ``ModelOutput`` (Hugging Face) is protected
    as one returning its logits (B, 2N), under the name ``model`` (its head: ``model.classifier``).

    ``method="device-head"`` (split inference) returns ``(trunk, device_head)`` instead: the trunk returns the
    features (B, D) for the cloud, the :class:`DeviceHead` holds the head for the device (``scale`` and ``seed``
    do not apply: nothing is random); see :func:`protect_split`.
    """
    scale = check_scale(scale)
    entry = methods.get(method, protection=True)
    if entry.split:
        return protect_split(model, head=head, example_input=example_input)
    protected = copy.deepcopy(model).eval()
    x = probe_input(protected, example_input)
    wrapped = as_tensor_model(protected, x)  # a Hugging Face model returns a ModelOutput: serve its logits
    if wrapped is not protected:
        protected, head = wrapped, None if head is None else f"model.{head}"
    trace = trace_head(protected, x, head)
    layer = protected.get_submodule(trace.head)
    weight, bias = head_parameters(layer)
    w_en, b_en, permutation = encrypted_head(weight, bias, method=method, scale=scale, seed=seed)
    protected = replace_module(protected, trace.head, build_head(layer, w_en, b_en))  # a new root if head is ""
    key = Key(
        permutation=permutation.numpy(),
        n_real=weight.shape[0],
        method=method,
        scale=scale if entry.takes_scale else None,  # the other methods do not use S_a
        model_fingerprint=head_fingerprint(w_en, b_en),
        head=trace.head,
        seeded=seed is not None,
    )
    _check_decrypts(protected, key, x, trace.output)
    return protected, key


@torch.no_grad()
def _check_decrypts(protected: nn.Module, key: Key, x: torch.Tensor, expected: torch.Tensor) -> None:
    message = (
        f"layer {key.head!r} does not produce the model's logits directly "
        "(the protected model would not decrypt to the original); pass head= to choose another"
    )
    try:
        out = protected(x)
    except RuntimeError:  # e.g. a later layer cannot take 2N inputs
        raise HeadNotFound(message) from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    out = out.reshape(out.shape[0], -1)
    if out.shape[-1] != key.n_outputs or not torch.allclose(
        key.decrypt(out), expected.reshape(out.shape[0], -1), rtol=1e-4, atol=1e-4
    ):
        raise HeadNotFound(message)


def protect_split(model: nn.Module, *, head: str | None = None,
                  example_input: torch.Tensor | None = None) -> tuple[nn.Module, DeviceHead]:
    """Split inference: ``(trunk, device_head)``. The trunk (a copy, eval mode) returns the features (B, D) the
    head consumed and goes to the cloud; ``device_head.decrypt(features)`` gives the logits (B, N) on the
    device, equal to the model's up to float rounding. ``device_head.model_fingerprint`` names the trunk."""
    trunk, weight, bias, name = split_head(model, head, example_input)
    device = DeviceHead(weight.detach().cpu().numpy(), bias.detach().cpu().numpy(), head=name,
                        model_fingerprint=trunk_fingerprint(trunk))
    return trunk, device
