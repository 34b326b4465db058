"""HopSkipJump (Chen et al. 2020), L2, through ART: decision-based, sees only the top-1 label.

ART has no query budget; we run one iteration at a time (``resume``, from the previous adversarial)
through a :class:`~._adapters.QueryCounter` and keep, per image, the last adversarial reached within
``queries`` distinct queries. A minimum-norm attack: with ``eps``, success needs ‖r‖₂ ≤ eps, and an image
stops (spends no more queries) once its adversarial is within ``eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import defaults
from ._adapters import Judge, QueryCounter, art_classifier, check_float, check_int, finish, seeded, to_tensor
from .base import AttackResult


class _TopOne(nn.Module):
    """Only the decision: one-hot of the top-1 (B, K); nothing else of the scores leaks to the attack."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)


@dataclass
class HopSkipJump:
    """Untargeted L2 HopSkipJump with at most ``queries`` distinct queries per image."""

    queries: int = 5000
    eps: float | None = None
    init_eval: int = 100  # ART's defaults: gradient-estimate queries at the first iteration
    max_eval: int = 10000
    init_size: int = 100  # random trials for a first adversarial point
    batch_size: int | None = None  # images per forward pass; None: defaults.batch_size of the images' device

    def __post_init__(self) -> None:
        check_int("HopSkipJump", "queries", self.queries)
        check_float("HopSkipJump", "eps", self.eps, optional=True)
        check_int("HopSkipJump", "init_eval", self.init_eval)
        check_int("HopSkipJump", "max_eval", self.max_eval, minimum=self.init_eval)
        check_int("HopSkipJump", "init_size", self.init_size)
        if self.batch_size is not None:
            check_int("HopSkipJump", "batch_size", self.batch_size)

    def __call__(self, model: nn.Module, images: torch.Tensor, *, judge: Judge | None = None,
                 generator: np.random.Generator | None = None) -> AttackResult:
        """images (B, C, H, W) in [0, 1]; ``judge`` decides success (default ``model``); ``generator``
        seeds each image's run (default ``default_rng(0)``). ``result.queries``: distinct queries used."""
        from art.attacks.evasion import HopSkipJump as ArtHopSkipJump

        generator = np.random.default_rng(0) if generator is None else generator
        batch_size = self.batch_size or defaults.batch_size(images.device.type)  # ART's 64: 2.4x slower on a CPU core
        adversarial = images.clone()
        used = torch.zeros(len(images), dtype=torch.long)
        iterations = torch.zeros(len(images), dtype=torch.long)
        for i in range(len(images)):
            counter = QueryCounter(_TopOne(model))
            attack = ArtHopSkipJump(art_classifier(counter, images), norm=2, max_iter=1, max_eval=self.max_eval,
                                    init_eval=self.init_eval, init_size=self.init_size, batch_size=batch_size,
                                    verbose=False)
            counter.reset()  # the probe art_classifier sent is not the attack's
            x = images[i:i + 1].detach().cpu()
            label = counter(x).argmax(1)
            current = _first_adversarial(counter, x, label, self.init_size, generator)  # ART's own is unseeded
            with seeded(generator):
                while current is not None:
                    step = attack.generate(x.numpy(), x_adv_init=current.copy(), resume=iterations[i] > 0)
                    failed = counter(torch.from_numpy(step)).argmax(1) == label
                    if counter.queries > self.queries or failed:
                        break  # over budget: keep the last point reached within it
                    current, iterations[i], used[i] = step, iterations[i] + 1, counter.queries
                    if self.eps is not None and np.linalg.norm(current - x.numpy()) <= self.eps:
                        break  # within the budget: a success at eps, no need to spend more queries
            if iterations[i] == 0:  # nothing within the budget: report what was spent, up to it
                used[i] = min(counter.queries, self.queries)
            if current is not None and iterations[i] > 0:
                adversarial[i] = to_tensor(current, images)[0]
        return finish(model, judge, images, adversarial, iterations, queries=used, eps=self.eps)


def _first_adversarial(counter: QueryCounter, x: torch.Tensor, label: torch.Tensor, trials: int,
                       generator: np.random.Generator) -> np.ndarray | None:
    """A uniform-noise image (1, C, H, W) whose top-1 differs from ``label``, drawn from ``generator``
    (at most ``trials`` queries), as ART's initial search does; None if none is found."""
    for _ in range(trials):
        noise = generator.uniform(0.0, 1.0, size=tuple(x.shape)).astype(np.float32)
        if counter(torch.from_numpy(noise)).argmax(1) != label:
            return noise
    return None
