"""What the attacker stages share: the device's decision on an attacked image, and its records."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ...attacks.base import norms
from ...data import Sample
from ..plan import Shard
from ..records import AttackerRecord
from ..workbench import Secret


@torch.no_grad()
def decrypted_top1(served: nn.Module, secret: Secret | None, x: torch.Tensor) -> torch.Tensor:
    """(B,) the device's real top-1 for pixel images x (B, C, H, W) (the original: no secret)."""
    outputs = served(x)
    return (outputs if secret is None else secret.decrypt(outputs)).argmax(1)


def attacker_records(shard: Shard, method: str, attacker: str, samples: list[Sample], defended: torch.Tensor,
                     adversarial: torch.Tensor, images: torch.Tensor, queries: torch.Tensor | None = None,
                     named: torch.Tensor | None = None) -> list[dict]:
    """AttackerRecord dicts for a batch: ``defended`` (B,) bool, images and adversarial (B, C, H, W);
    ``queries`` (B,) sent to the served model, ``named`` (B,) the attacker names the clean real top-1."""
    size = norms(adversarial - images, images)
    return [asdict(AttackerRecord(shard.model, method, attacker, sample.path.name, bool(defended[i]),
                                  float(size["rho"][i]), float(size["l2"][i]),
                                  None if queries is None else int(queries[i]),
                                  None if named is None else bool(named[i])))
            for i, sample in enumerate(samples)]
