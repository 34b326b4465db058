"""Auto-PGD (Croce & Hein 2020), L2, through ART: step size adapted per sample, no tuning."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from ._adapters import Judge, art_classifier, check_float, check_int, finish, seeded, to_tensor
from .base import AttackResult

LOSSES = ("cross_entropy", "difference_logits_ratio")


@dataclass
class APGD:
    """Untargeted L2 APGD at ‖r‖₂ ≤ ``eps`` on the attacked model's clean top-1."""

    eps: float
    steps: int = 50
    restarts: int = 1  # ART's nb_random_init
    loss: str = "cross_entropy"  # or "difference_logits_ratio" (needs >= 3 outputs)

    def __post_init__(self) -> None:
        check_float("APGD", "eps", self.eps)
        check_int("APGD", "steps", self.steps)
        check_int("APGD", "restarts", self.restarts)
        if self.loss not in LOSSES:
            raise InvalidArgument(f"APGD loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def __call__(self, model: nn.Module, images: torch.Tensor, *, judge: Judge | None = None,
                 generator: np.random.Generator | None = None) -> AttackResult:
        """images (B, C, H, W) in [0, 1]; ``judge`` decides success (default ``model``); ``generator``
        seeds ART's random starts (default ``default_rng(0)``)."""
        from art.attacks.evasion import AutoProjectedGradientDescent

        generator = np.random.default_rng(0) if generator is None else generator
        with seeded(generator):
            attack = AutoProjectedGradientDescent(
                art_classifier(model.eval(), images), norm=2, eps=self.eps, eps_step=2 * self.eps,
                max_iter=self.steps, nb_random_init=self.restarts, batch_size=len(images), loss_type=self.loss,
                verbose=False)
            adversarial = attack.generate(images.detach().cpu().numpy())
        iterations = torch.full((len(images),), self.steps * self.restarts, dtype=torch.long)
        return finish(model, judge, images, to_tensor(adversarial, images), iterations, eps=self.eps)
