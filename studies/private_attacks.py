"""The attackers of :mod:`studies.private` that the library does not have yet, kept simple and explicit:

- :func:`noise_discovery`: the red team's query-only discovery of the real outputs — send uniform-noise images
  (never a photo), rank the served outputs by how much they vary across the queries, keep the ``keep`` that vary
  least (on the paper's scheme the fakes, scaled by S_a, vary ~10× more than the real rows);
- :class:`Columns`: a served model restricted to chosen output columns (what DeepFool then attacks);
- :func:`pgd_l2`: L2 PGD at a fixed budget (on the attacker's surrogate: transfer; on the served model and the
  attacker's read-out :func:`fit_decoder`: the labelled-query attacker);
- :func:`mcnemar_exact`: the paired exact test on discordant pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Columns(nn.Module):
    """``model`` (B, ...) → (B, K) restricted to the columns ``index`` (k,) → (B, k)."""

    def __init__(self, model: nn.Module, index: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.as_tensor(np.asarray(index), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.reshape(out.shape[0], -1)[:, self.index]


@torch.no_grad()
def noise_discovery(served: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], keep: int, queries: int,
                    seed: int, most: bool = False) -> np.ndarray:
    """The ``keep`` served positions whose outputs vary least (``most``: most) over ``queries`` uniform-noise
    images of ``shape`` (C, H, W) drawn from ``seed``, in that order: the attacker's guess of the real rows."""
    noise = torch.rand((queries, *shape), generator=torch.Generator().manual_seed(seed))
    spread = served(noise).reshape(queries, -1).double().std(0).numpy()
    return np.argsort(-spread if most else spread, kind="stable")[:keep]


def discovery_curve(served: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], real: np.ndarray,
                    budgets: Sequence[int], seed: int) -> dict[int, int]:
    """queries → how many of the ``real`` positions (N,) the discovery with that many queries finds."""
    return {q: len(set(noise_discovery(served, shape, len(real), q, seed).tolist()) & set(real.tolist()))
            for q in budgets}


def pgd_l2(model: nn.Module, images: torch.Tensor, eps: float, steps: int = 40) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] → adversarial images within L2 ``eps`` of them, made on ``model`` alone:
    untargeted against its own clean top-1, the margin loss max_{j≠y} f_j − f_y (scale-free, so that a read-out
    of any scale is attacked as hard as logits), step 2.5 eps / steps, clipped to [0, 1]. Used on the attacker's
    surrogate (transfer) and on the served model followed by the attacker's read-out."""
    with torch.no_grad():
        label = model(images).argmax(1)
    x = images.clone()
    step = 2.5 * eps / steps
    for _ in range(steps):
        x.requires_grad_(True)
        out = model(x)
        own = out.gather(1, label[:, None]).squeeze(1)
        other = out.masked_fill(F.one_hot(label, out.shape[1]).bool(), float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((other - own).sum(), x)
        with torch.no_grad():
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = x + step * grad / norm
            delta = x - images
            dnorm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = (images + delta * (eps / dnorm).clamp(max=1.0)).clamp(0, 1)
    return x.detach()


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Paired exact test on the same images: (b01, b10, two-sided p) where b01 counts a False / b True and b10
    a True / b False; p is the binomial(b01 + b10, 1/2) two-sided tail (1.0 when there is no discordant pair)."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    b01 = sum(1 for x, y in zip(a, b) if not x and y)
    b10 = sum(1 for x, y in zip(a, b) if x and not y)
    n = b01 + b10
    if n == 0:
        return b01, b10, 1.0
    tail = sum(math.comb(n, i) for i in range(min(b01, b10) + 1)) / 2**n
    return b01, b10, min(1.0, 2 * tail)


class Decoded(nn.Module):
    """``model`` (B, ...) → (B, K) followed by a fixed linear decoder (K, N) + (N,): (B, N)."""

    def __init__(self, model: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.reshape(out.shape[0], -1) @ self.weight + self.bias


@torch.no_grad()
def fit_decoder(served: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                n_classes: int, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled-query attacker's decoder: ridge least squares from the served outputs (B, K) on its own
    labelled ``images`` (B, C, H, W) to one-hot ``labels`` (B,) → weight (K, N), bias (N,). Needs no key and no
    knowledge of the scheme: whatever linear map the scheme applies, a linear read-out of the classes is learned
    from the outputs (for split inference: a head on the served features)."""
    out = served(images).reshape(len(images), -1).double()
    mean, std = out.mean(0), out.std(0).clamp_min(1e-9)
    z = (out - mean) / std
    target = F.one_hot(labels, n_classes).double()
    gram = z.T @ z
    weight = torch.linalg.solve(gram + ridge * gram.trace() / len(gram) * torch.eye(len(gram), dtype=gram.dtype),
                                z.T @ (target - target.mean(0)))
    weight = weight / std[:, None]
    bias = target.mean(0) - mean @ weight
    return weight.float(), bias.float()
