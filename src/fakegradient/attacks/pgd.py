"""L2 PGD (Madry et al. 2018) through foolbox 3, with random restarts and an EOT-style variant.

EOT-style (``candidates`` (M, N) served positions): the attacker does not know which rows are real, so
it maximises the sum over M candidate real-row sets S_m of CE(served(x)[:, S_m], y_m), y_m the clean
top-1 within S_m (Athalye et al. 2018's expectation, over the unknown key instead of a transformation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from ._adapters import Judge, check_float, check_int, finish, seeded, top1
from .base import AttackResult


@dataclass
class L2PGD:
    """Untargeted L2 PGD at ‖r‖₂ ≤ ``eps`` on the attacked model's clean top-1 (or the EOT loss)."""

    eps: float
    steps: int = 50
    rel_stepsize: float = 0.1  # step = rel_stepsize * eps (foolbox's default 0.025 is for 50+ steps at small eps)
    restarts: int = 1  # random starts; a sample keeps the first restart that succeeds
    candidates: np.ndarray | None = None  # (M, N) served positions: EOT-style loss

    def __post_init__(self) -> None:
        check_float("L2PGD", "eps", self.eps)
        check_int("L2PGD", "steps", self.steps)
        check_float("L2PGD", "rel_stepsize", self.rel_stepsize)
        check_int("L2PGD", "restarts", self.restarts)
        if self.candidates is not None:
            self.candidates = np.asarray(self.candidates)
            if self.candidates.ndim != 2 or self.candidates.shape[1] < 2 or self.candidates.dtype.kind not in "iu":
                raise InvalidArgument(f"L2PGD candidates must be integer positions (M, N >= 2), "
                                      f"got shape {self.candidates.shape}")

    def __call__(self, model: nn.Module, images: torch.Tensor, *, judge: Judge | None = None,
                 generator: np.random.Generator | None = None) -> AttackResult:
        """images (B, C, H, W) in [0, 1]; ``judge`` decides success (default ``model``); ``generator``
        seeds the random starts (default ``default_rng(0)``)."""
        import foolbox as fb

        generator = np.random.default_rng(0) if generator is None else generator
        fmodel = fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=images.device)
        labels = top1(model, images)
        attack = fb.attacks.L2PGD(rel_stepsize=self.rel_stepsize, steps=self.steps, random_start=True)
        if self.candidates is not None:
            attack = _summed_loss(attack, torch.as_tensor(self.candidates, device=images.device), model, images)
        judged = model if judge is None else judge
        best, done = images.clone(), torch.zeros(len(images), dtype=torch.bool, device=images.device)
        iterations = torch.zeros(len(images), dtype=torch.long, device=images.device)
        for _ in range(self.restarts):
            with seeded(generator):
                _, clipped, _ = attack(fmodel, images, labels, epsilons=self.eps)
            iterations[~done] += self.steps
            fresh = (top1(judged, clipped) != top1(judged, images)) & ~done
            best[fresh], done = clipped[fresh], done | fresh
            if done.all():
                break
        best[~done] = clipped[~done]  # the last restart's attempt
        return finish(model, judge, images, best, iterations, eps=self.eps)


def _summed_loss(attack, candidates: torch.Tensor, model: nn.Module, images: torch.Tensor):
    """The foolbox attack with its loss replaced by Σ_m CE(logits[:, S_m], y_m); candidates (M, N)."""
    import eagerpy as ep

    with torch.no_grad():
        clean = model(images)[:, candidates].argmax(dim=2)  # (B, M): y_m

    def get_loss_fn(fmodel, _labels):
        def loss_fn(inputs: ep.Tensor) -> ep.Tensor:
            logits = fmodel(inputs).raw[:, candidates]  # (b, M, N)
            return ep.astensor(nn.functional.cross_entropy(
                logits.flatten(0, 1), clean[: len(logits)].flatten(), reduction="sum"))
        return loss_fn

    attack.get_loss_fn = get_loss_fn
    return attack
