"""Square attack (Andriushchenko et al. 2020), L2, through ART: score-based, sees only the outputs.

Run one image at a time through a :class:`~._adapters.QueryCounter`, so that every sample's distinct
queries are counted exactly and stay within ``queries`` (ART stops a sample once it is adversarial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from ._adapters import Judge, QueryCounter, art_classifier, check_float, check_int, finish, seeded, to_tensor
from .base import AttackResult


@dataclass
class SquareAttack:
    """Untargeted L2 Square attack at ‖r‖₂ ≤ ``eps`` with at most ``queries`` distinct queries per image."""

    eps: float
    queries: int = 5000
    p_init: float = 0.8  # ART's default: initial fraction of pixels in a square

    def __post_init__(self) -> None:
        check_float("SquareAttack", "eps", self.eps)
        check_int("SquareAttack", "queries", self.queries, minimum=3)  # clean, initial stripes, >= 1 iteration
        check_float("SquareAttack", "p_init", self.p_init)
        if self.p_init > 1:
            raise InvalidArgument(f"SquareAttack p_init must be in (0, 1], got {self.p_init!r}")

    def __call__(self, model: nn.Module, images: torch.Tensor, *, judge: Judge | None = None,
                 generator: np.random.Generator | None = None) -> AttackResult:
        """images (B, C, H, W) in [0, 1]; ``judge`` decides success (default ``model``); ``generator``
        seeds each image's run (default ``default_rng(0)``). ``result.queries``: distinct queries used."""
        from art.attacks.evasion import SquareAttack as ArtSquare

        generator = np.random.default_rng(0) if generator is None else generator
        adversarial, used = images.clone(), torch.zeros(len(images), dtype=torch.long)
        for i in range(len(images)):
            counter = QueryCounter(model)
            attack = ArtSquare(art_classifier(counter, images), norm=2, eps=self.eps, p_init=self.p_init,
                               max_iter=self.queries - 2, nb_restarts=1, batch_size=1, verbose=False)
            counter.reset()  # the probe art_classifier sent is not the attack's
            with seeded(generator):
                adversarial[i] = to_tensor(attack.generate(images[i:i + 1].detach().cpu().numpy()), images)[0]
            used[i] = counter.queries
        return finish(model, judge, images, adversarial, used.clone(), queries=used, eps=self.eps)
