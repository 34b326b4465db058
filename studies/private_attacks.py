"""The attackers of :mod:`studies.private`, on top of the library's (``fakegradient.attacks``):

- :func:`noise_discovery` / :func:`discovery_curve`: the query-only discovery of the real outputs at a fixed number
  of uniform-noise images (the library's :func:`~fakegradient.attacks.query_only.spread_order`), keeping the
  ``keep`` positions that vary least (or most); :func:`adaptive_discovery`: the library's doubling discovery
  (:func:`~fakegradient.attacks.query_only.discover_real_outputs`) where the served model has 2N outputs;
- :class:`Columns`: a served model restricted to chosen output columns (what an attacker who believes those are
  the real outputs attacks);
- :func:`pgd_l2`: L2 PGD at a fixed budget with the scale-free margin loss (on the attacker's surrogate: transfer;
  on the served model followed by the attacker's read-out :func:`fit_decoder`: the labelled-query attacker);
- :func:`white_box` and :func:`black_box`: the library's PGD / APGD / C&W and Square / HopSkipJump, run on a
  model, returning the adversarial images (and the queries each image used).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fakegradient.attacks.known_plaintext import query
from fakegradient.attacks.query_only import discover_real_outputs, spread_order


class Columns(nn.Module):
    """``model`` (B, ...) → (B, K) restricted to the columns ``index`` (k,) → (B, k)."""

    def __init__(self, model: nn.Module, index: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.as_tensor(np.asarray(index), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.reshape(out.shape[0], -1)[:, self.index]


def noise_discovery(served: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], keep: int, queries: int,
                    seed: int, most: bool = False) -> np.ndarray:
    """The ``keep`` served positions whose outputs vary least (``most``: most) over ``queries`` uniform-noise
    images of ``shape`` (C, H, W) drawn from ``seed``, in that order: the attacker's guess of the real rows."""
    noise = torch.rand((queries, *shape), generator=torch.Generator().manual_seed(seed))
    order = spread_order(query(served, noise).reshape(queries, -1))
    return (order[::-1] if most else order)[:keep].copy()


def discovery_curve(served: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], real: np.ndarray,
                    budgets: Sequence[int], seed: int) -> dict[int, int]:
    """queries → how many of the ``real`` positions (N,) the discovery with that many queries finds."""
    return {q: len(set(noise_discovery(served, shape, len(real), q, seed).tolist()) & set(real.tolist()))
            for q in budgets}


def adaptive_discovery(served: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], n_real: int,
                       n_outputs: int, fakes_win: bool, seed: int, fallback_queries: int) -> tuple[np.ndarray, int]:
    """(believed-real positions (N,), noise queries spent) of the query-only adaptive attacker, who knows the
    scheme's public design (``fakes_win``): the library's doubling discovery on 2N outputs; on other counts
    (3N: decoys) the ``n_real`` least-varying outputs over ``fallback_queries`` noise images."""
    if n_outputs == 2 * n_real:
        found = discover_real_outputs(served, shape, fakes_win, seed=seed)
        return np.asarray(found.real_positions), int(found.queries)
    return np.sort(noise_discovery(served, shape, n_real, fallback_queries, seed, most=not fakes_win)), \
        fallback_queries


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


WHITE_BOX = ("pgd", "apgd", "cw")  # the library's gradient attacks the study runs on the served outputs
BLACK_BOX = ("square", "hopskipjump")  # and its query attacks
# per image: "<attack>_defended" ("" where not run); the black-box attacks also "<attack>_queries"
ATTACKS = ("naive", *WHITE_BOX, "transfer", "discovery", "reverse", "aware", *BLACK_BOX,
           *(f"qo_{a}" for a in BLACK_BOX), "fileonly", "fileonly_pgd", "decoder")
QUERY_ATTACKS = (*BLACK_BOX, *(f"qo_{a}" for a in BLACK_BOX))  # these also record "<attack>_queries"
NO_ROWS = ("device-head", "mixing")  # schemes none of whose served outputs is a class: nothing to discover


def white_box(name: str, model: nn.Module, images: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The library's ``name`` attack (L2PGD 50 steps, APGD 50 steps, C&W L2 5×100 steps) at L2 ``eps`` on
    ``model``'s own top-1: (B, C, H, W) → adversarial images (the clean image where it found nothing within eps)."""
    from fakegradient.attacks import APGD, L2PGD, CarliniWagnerL2

    attack = {"pgd": lambda: L2PGD(eps=eps, steps=50), "apgd": lambda: APGD(eps=eps, steps=50),
              "cw": lambda: CarliniWagnerL2(eps=eps)}[name]()
    return attack(model, images, generator=np.random.default_rng(seed)).adversarial


def black_box(name: str, model: nn.Module, images: torch.Tensor, eps: float, queries: int,
              seed: int, hsj_params: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The library's Square (scores) or HopSkipJump (top-1 only; ``hsj_params``: its ``init_eval`` …) at L2
    ``eps`` with at most ``queries`` distinct queries per image on ``model``: (adversarial images (B, C, H, W),
    queries used (B,))."""
    from fakegradient.attacks import HopSkipJump, SquareAttack

    attack = SquareAttack(eps=eps, queries=queries) if name == "square" else \
        HopSkipJump(queries=queries, eps=eps, **(hsj_params or {}))
    result = attack(model, images, generator=np.random.default_rng(seed))
    return result.adversarial, result.queries.numpy()


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


@torch.no_grad()
def readout_curve(served: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                  evaluation: torch.Tensor, clean: np.ndarray, sizes: Sequence[int]) -> dict[int, int]:
    """Privacy: labelled queries → evaluation images (of ``len(evaluation)``) on which a read-out fitted on the
    first that many of the attacker's ``images`` / ``labels`` names the owner's class ``clean`` (B,)."""
    curve = {}
    for size in sizes:
        decoded = Decoded(served, *fit_decoder(served, images[:size], labels[:size], 10))
        curve[size] = int((decoded(evaluation).argmax(1).numpy() == clean).sum())
    return curve
