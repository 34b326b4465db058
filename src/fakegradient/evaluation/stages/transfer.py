"""Transfer: DeepFool on the public unprotected model, the adversarial images replayed on every
method (on the original itself: its sanity baseline). Its ‖r‖₂ sizes set the budgets of the adaptive stage."""

from __future__ import annotations

import torch

from ...attacks.base import norms
from ...data import Sample
from ..plan import Shard, ShardResult
from ..workbench import Workbench, deepfool
from .common import attacker_records, decrypted_top1


def run(bench: Workbench, shard: Shard, images: torch.Tensor, samples: list[Sample]) -> ShardResult:
    """Records for every protected method; values ``l2`` (b,): the attack's sizes."""
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    adversarial = deepfool(bench.config)(bench.original, images).adversarial
    records = []
    for method, (pipeline, key) in bench.served.items():
        defended = decrypted_top1(pipeline, key, adversarial) == truth
        records += attacker_records(shard, method, "transfer", samples, defended, adversarial, images)
    return ShardResult(records, values={"l2": norms(adversarial - images, images)["l2"].tolist()})
