"""Fake output rows (Algorithm 1 and the paper's Random Weight baseline).

Pure tensor functions: ``W_o`` has shape (N, D) (N classes, D features), ``b_o`` shape (N,).
Each returns the fake rows ``(W_F, b_F)`` with the same shapes.
"""

from __future__ import annotations

import math

import torch

from ..defaults import SCALE as DEFAULT_SCALE
from ..errors import InvalidArgument


def check_scale(scale: float) -> float:
    """Return ``scale`` as float, or raise :class:`InvalidArgument` unless it is finite and > 0."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise InvalidArgument(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"scale must be finite and > 0, got {scale!r}")
    return value


def fake_gradient_rows(
    weight: torch.Tensor, bias: torch.Tensor, scale: float = DEFAULT_SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1: ``W_F = (max(W_o) - |W_o|) * S_a * sign(W_o)``, ``b_F = b_o``.

    ``max(W_o)`` is the signed maximum over the whole matrix, as in the paper.
    """
    scale = check_scale(scale)
    w_max = weight.max()
    fake_weight = (w_max - weight.abs()) * scale * weight.sign()
    return fake_weight, bias.clone()


def random_weight_rows(
    weight: torch.Tensor, bias: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Weight baseline (§5.1): ``W_F ~ Normal(mean(W_o), std(W_o))``, ``b_F = b_o``."""
    mean, std = weight.mean(), weight.std()
    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device="cpu")
    return (noise.to(weight.device) * std + mean), bias.clone()


def hardened_rows(
    weight: torch.Tensor, bias: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake rows with no pairing oracle (our hardened variant, not in the paper).

    Fake row j mixes two real rows a_j, c_j, each with its entries shuffled by its own random
    permutation (so no sign pattern or magnitude relation ties it to a real row), rescaled to
    the norm of a third random real row (so row norms follow the real rows' distribution).
    Fake biases are real biases of random rows plus Gaussian noise of half their spread, then
    moved to the next representable value until no two of the 2N biases are equal (no bias
    equality oracle, whatever the draw). Shapes as the inputs: (N, D), (N,).
    """
    n, d = weight.shape
    cpu_w = weight.detach().cpu()

    def shuffled_rows() -> torch.Tensor:
        rows = cpu_w[torch.randint(n, (n,), generator=generator)]
        order = torch.rand((n, d), generator=generator).argsort(dim=1)
        return rows.gather(1, order)

    mix = torch.rand((n, 1), generator=generator, dtype=cpu_w.dtype) * 0.4 + 0.3
    fake = (1 - mix) * shuffled_rows() + mix * shuffled_rows()
    target_norm = cpu_w.norm(dim=1)[torch.randint(n, (n,), generator=generator)]
    fake = fake * (target_norm / fake.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
    cpu_b = bias.detach().cpu()
    fake_b = cpu_b[torch.randint(n, (n,), generator=generator)] + torch.randn(
        n, generator=generator, dtype=cpu_b.dtype) * (0.5 * cpu_b.std() if n > 1 else 0.0)
    fake_b = _distinct_from(fake_b.to(cpu_b.dtype), cpu_b)
    return fake.to(weight.device, weight.dtype), fake_b.to(bias.device, bias.dtype)


def _distinct_from(values: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """``values`` (M,) with each entry stepped up by one ULP until it differs from ``taken`` (N,)
    and from the entries before it. A continuous draw collides rarely (a few % of 2000 float32
    biases), so this changes almost nothing but makes distinctness hold on every draw."""
    seen = set(taken.tolist())
    out = values.clone()
    inf = torch.tensor(float("inf"), dtype=values.dtype)
    for i, value in enumerate(values.tolist()):
        current = values[i]
        while value in seen:
            current = torch.nextafter(current, inf)
            value = current.item()
        seen.add(value)
        out[i] = current
    return out


def scaled_copy_rows(
    weight: torch.Tensor, bias: torch.Tensor, scale: float = DEFAULT_SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Control (the idea the paper rejects in §4.4.1): ``W_F = S_a * W_o``, ``b_F = b_o``.

    Fake output c is S_a times real logit c minus (S_a - 1) b_c: it wins wherever the real top-1
    logit is positive, and its gradient is the real one times S_a, so DeepFool on it moves the
    real decision too. Shapes (N, D), (N,).
    """
    scale = check_scale(scale)
    return weight * scale, bias.clone()


def random_decoy_rows(
    weight: torch.Tensor, bias: torch.Tensor, scale: float = DEFAULT_SCALE, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Control: random positive rows unrelated to W_o, as large as Algorithm 1's rows.

    Row j is ``U_j / ‖U_j‖₂ * ‖F_j‖₂`` with ``U_j`` i.i.d. Uniform(0, 1) entries (positive: on the
    non-negative post-ReLU features of the usual heads every fake logit is then positive and
    large) and ``F_j`` the j-th row of :func:`fake_gradient_rows` (same S_a): the decoys have the
    fake-gradient rows' norms, hence their scale, but no sign pattern, direction or ordering of
    W_o. ``b_F = b_o``. Shapes (N, D), (N,).
    """
    scale = check_scale(scale)
    norms = fake_gradient_rows(weight, bias, scale)[0].norm(dim=1, keepdim=True)  # (N, 1)
    u = torch.rand(weight.shape, generator=generator, dtype=weight.dtype, device="cpu").to(weight.device)
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-12) * norms, bias.clone()


def official_fake_bias(bias: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """The released code's fake bias: ``b_F = S_a * (max b_o - |b_o|) * sign(b_o)`` with sign(0) = +1.

    (The paper's text says ``b_F = b_o``.) ``max`` is the signed maximum over b_o. Shape (N,).
    """
    scale = check_scale(scale)
    sign = torch.where(bias >= 0, 1.0, -1.0).to(bias.dtype)  # sign(0) = +1 (and -0.0 too)
    return (bias.max() - bias.abs()) * scale * sign
