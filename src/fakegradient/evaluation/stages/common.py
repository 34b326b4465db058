"""What the attacker stages share: the device's decision on an attacked image, and its records."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ...attacks.base import norms
from ...data import Sample
from ...key import Key
from ..plan import Shard
from ..records import AttackerRecord


@torch.no_grad()
def decrypted_top1(served: nn.Module, key: Key, x: torch.Tensor) -> torch.Tensor:
    """(B,) the device's real top-1 for pixel images x (B, C, H, W)."""
    return key.decrypt(served(x)).argmax(1)


def attacker_records(shard: Shard, method: str, attacker: str, samples: list[Sample], defended: torch.Tensor,
                     adversarial: torch.Tensor, images: torch.Tensor) -> list[dict]:
    """AttackerRecord dicts for a batch: ``defended`` (B,) bool, images and adversarial (B, C, H, W)."""
    size = norms(adversarial - images, images)
    return [asdict(AttackerRecord(shard.model, method, attacker, sample.path.name, bool(defended[i]),
                                  float(size["rho"][i]), float(size["l2"][i])))
            for i, sample in enumerate(samples)]
