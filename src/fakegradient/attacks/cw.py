"""Carlini & Wagner L2 (2017) through foolbox 3: a minimum-norm attack, capped at a budget if given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._adapters import Judge, check_bool, check_float, check_int, finish, top1
from .base import AttackResult


@dataclass
class CarliniWagnerL2:
    """Untargeted C&W L2 on the attacked model's clean top-1; ``eps``: success only within ‖r‖₂ ≤ eps."""

    eps: float | None = None
    binary_search_steps: int = 5
    steps: int = 100
    stepsize: float = 0.05  # Adam's, in tanh space
    confidence: float = 0.0
    initial_const: float = 1.0  # measured on digits: median ‖r‖₂ 0.58 (DeepFool 0.56); 1e-3 gave 0.79
    # stop a binary-search step when the loss stalls (foolbox's and Carlini's reference): the loss is the
    # batch's sum, so an image's result can depend on its batch-mates; False: every image's result is its own
    abort_early: bool = True

    def __post_init__(self) -> None:
        check_float("CarliniWagnerL2", "eps", self.eps, optional=True)
        check_int("CarliniWagnerL2", "binary_search_steps", self.binary_search_steps)
        check_int("CarliniWagnerL2", "steps", self.steps)
        check_float("CarliniWagnerL2", "stepsize", self.stepsize)
        check_float("CarliniWagnerL2", "confidence", self.confidence, positive=False)
        check_float("CarliniWagnerL2", "initial_const", self.initial_const)
        check_bool("CarliniWagnerL2", "abort_early", self.abort_early)

    def __call__(self, model: nn.Module, images: torch.Tensor, *, judge: Judge | None = None,
                 generator: np.random.Generator | None = None) -> AttackResult:
        """images (B, C, H, W) in [0, 1]; ``judge`` decides success (default ``model``). Deterministic:
        ``generator`` is accepted for a uniform interface and unused."""
        import foolbox as fb

        fmodel = fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=images.device)
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.stepsize,
            confidence=self.confidence, initial_const=self.initial_const,
            abort_early=self.abort_early)
        adversarial, _, found = attack(fmodel, images, top1(model, images), epsilons=None)
        # foolbox returns zeros where it found nothing: keep the clean image there (a failure)
        adversarial = torch.where(found.view(-1, *[1] * (images.dim() - 1)), adversarial, images)
        iterations = torch.full((len(images),), self.binary_search_steps * self.steps, dtype=torch.long)
        return finish(model, judge, images, adversarial, iterations, eps=self.eps)
