"""The registry of evaluation stages: name → ``run(bench, shard, images, samples) -> ShardResult``.

Adding a stage is one module here and one entry in :data:`STAGES`. :func:`run_shard` computes any
shard the same way on the driver and on a Ray worker.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import InvalidArgument
from ..plan import Shard, ShardResult
from ..workbench import Workbench, full_fp32
from . import adaptive, naive, transfer

STAGES: dict[str, Callable[..., ShardResult]] = {
    "deepfool": naive.run,  # the paper's attacker on the served model (Table 1/2)
    "transfer": transfer.run,  # round 1 with --adaptive: DeepFool on the public original
    "adaptive": adaptive.run,  # round 2: every attacker of attackers.ATTACKERS on every scheme
}


def run_shard(bench: Workbench, shard: Shard, images: torch.Tensor | None = None) -> ShardResult:
    """Compute one shard; ``images`` (b, C, H, W) if already loaded (else read from the samples)."""
    stage = STAGES.get(shard.stage)
    if stage is None:
        raise InvalidArgument(f"unknown shard stage {shard.stage!r}; one of {', '.join(STAGES)}")
    images = bench.batch(shard.start, shard.stop) if images is None else images
    with full_fp32():
        return stage(bench, shard, images, bench.samples[shard.start : shard.stop])
