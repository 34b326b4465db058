"""The adaptive attackers on one protected method (the paper tried only the naive one): key recovery
from the served file, feature space, black box, and a sanity attacker holding the key.
Defense success = the decrypted top-1 is unchanged."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ...attacks.blackbox import square_attack
from ...attacks.feature_space import FeatureSpacePGD
from ...attacks.key_recovery import recover_real_rows
from ...data import Sample
from ...head import build_head, head_parameters, replace_module, trace_head
from ...key import Key
from ..pipeline import Normalized
from ..plan import Shard, ShardResult
from ..workbench import Workbench, deepfool
from .common import attacker_records, decrypted_top1

CURVE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # feature-space budgets, in multiples of the base ‖r‖₂


class Decrypted(nn.Module):
    """The device's view, differentiable: real logits (B, N) = key.decrypt(served(x))."""

    def __init__(self, served: nn.Module, key: Key):
        super().__init__()
        self.served, self.key = served, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key.decrypt(self.served(x))


def restricted_to_rows(served: Normalized, head: str, positions: np.ndarray) -> Normalized:
    """The served pipeline with its head cut down to the rows at ``positions`` (the attacker's guess)."""
    attacked = copy.deepcopy(served)
    layer = attacked.model.get_submodule(head)
    weight, bias = head_parameters(layer)
    index = torch.as_tensor(positions, device=weight.device)
    replace_module(attacked.model, head, build_head(layer, weight[index], bias[index]))
    return attacked


def public_head(served: Normalized, probe: torch.Tensor) -> str:
    """The served head's name, found from the model alone (no key) by tracing a probe (1, C, H, W)."""
    with torch.no_grad():
        return trace_head(served.model, (probe - served.mean) / served.std).head


def _key_recovery(bench: Workbench, method: str) -> tuple[str, Normalized, dict]:
    """(head name, the pipeline cut down to the recovered rows, how well it went), once per worker."""
    memo = ("key-recovery", method)
    if memo not in bench.memo:
        pipeline, key = bench.served[method]
        head = public_head(pipeline, bench.batch(0, 1))  # traced on image 0, as the driver does
        recovered = recover_real_rows(*head_parameters(pipeline.model.get_submodule(head)))
        outcome = {"recovered_pct": 100 * recovered.recovered_fraction(key.permutation[: key.n_real]),
                   "oracle": recovered.oracle, "seconds": recovered.seconds}
        bench.memo[memo] = head, restricted_to_rows(pipeline, head, recovered.real_positions), outcome
    return bench.memo[memo]


def run(bench: Workbench, shard: Shard, images: torch.Tensor, samples: list[Sample]) -> ShardResult:
    """Records of the four attackers; values ``feature_curve`` (len(CURVE_FACTORS), b): defended flags
    of the feature-space attack at each curve budget, and ``key_recovery``: the file-only attacker's score."""
    config, budgets = bench.config, dict(shard.budgets)
    pipeline, key = bench.served[shard.method]
    attack = deepfool(config)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    records = []

    def add(attacker: str, adversarial: torch.Tensor) -> None:
        defended = decrypted_top1(pipeline, key, adversarial) == truth
        records.extend(attacker_records(shard, shard.method, attacker, samples, defended, adversarial, images))

    head, attacked, key_recovery = _key_recovery(bench, shard.method)
    add("key-recovery", attack(attacked, images).adversarial)
    pgd, head_name = FeatureSpacePGD(steps=config.feature_steps), "model." + head

    def eps(value: float) -> torch.Tensor:
        return torch.full((len(images),), value)

    add("feature-space", pgd(pipeline, head_name, images, eps(budgets["naive_l2"])))
    add("black-box", square_attack(pipeline, images, config.blackbox_factor * budgets["base_l2"],
                                   config.blackbox_queries))
    add("sanity", attack(Decrypted(pipeline, key), images).adversarial)
    curve = []
    for factor in CURVE_FACTORS:
        adversarial = pgd(pipeline, head_name, images, eps(factor * budgets["base_l2"]))
        curve.append((decrypted_top1(pipeline, key, adversarial) == truth).tolist())
    return ShardResult(records, values={"feature_curve": curve, "key_recovery": key_recovery})
