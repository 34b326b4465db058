"""Adaptive attackers (the paper tried only the naive one): transfer, key recovery, feature space,
black box, and a sanity attacker holding the key. Defense success = decrypted top-1 unchanged.

They run as shards (evaluation/shards.py) like the naive DeepFool, on the driver or on Ray:
``transfer`` shards first, whose ‖r‖₂ sizes set the budgets of the ``adaptive`` shards.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..attacks.base import norms
from ..attacks.blackbox import square_attack
from ..attacks.feature_space import FeatureSpacePGD
from ..attacks.key_recovery import recover_real_rows
from ..data import Sample
from ..head import build_head, head_parameters, replace_module, trace_head
from ..key import Key
from .pipeline import Normalized
from .records import ImageRecord
from .shards import Shard, ShardResult, Workbench, deepfool

ATTACKERS = ("naive", "transfer", "key-recovery", "feature-space", "black-box", "sanity")
CURVE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class AttackerRecord:
    model: str
    method: str
    attacker: str
    image: str
    defense_success: bool
    rho: float
    l2: float


@dataclass
class AdaptiveResult:
    records: list[AttackerRecord] = field(default_factory=list)
    key_recovery: dict[str, dict] = field(default_factory=dict)  # method → recovered %, oracle, seconds
    budgets: dict[str, float] = field(default_factory=dict)  # what each budgeted attacker was given
    # method → attacker → [(eps, defense success %)]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)


class Decrypted(nn.Module):
    """The device's view, differentiable: real logits (B, N) = key.decrypt(served(x))."""

    def __init__(self, served: nn.Module, key: Key):
        super().__init__()
        self.served, self.key = served, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key.decrypt(self.served(x))


@torch.no_grad()
def _decrypted_top1(served: nn.Module, key: Key, x: torch.Tensor) -> torch.Tensor:
    return key.decrypt(served(x)).argmax(1)


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


def _records(shard: Shard, method: str, attacker: str, samples: list[Sample], defended: torch.Tensor,
             adversarial: torch.Tensor, images: torch.Tensor) -> list[dict]:
    size = norms(adversarial - images, images)
    return [asdict(AttackerRecord(shard.model, method, attacker, sample.path.name, bool(defended[i]),
                                  float(size["rho"][i]), float(size["l2"][i])))
            for i, sample in enumerate(samples)]


def transfer_shard(bench: Workbench, shard: Shard, images: torch.Tensor,
                   samples: list[Sample]) -> ShardResult:
    """DeepFool on the original model (public weights), replayed on every protected method.
    Values: ``l2`` (b,) sizes, whose median over all images sets the other attackers' budgets."""
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    adversarial = deepfool(bench.config)(bench.original, images).adversarial
    records = []
    for method, (pipeline, key) in bench.protected.items():
        defended = _decrypted_top1(pipeline, key, adversarial) == truth
        records += _records(shard, method, "transfer", samples, defended, adversarial, images)
    return ShardResult(records, values={"l2": norms(adversarial - images, images)["l2"].tolist()})


def adaptive_shard(bench: Workbench, shard: Shard, images: torch.Tensor,
                   samples: list[Sample]) -> ShardResult:
    """Key recovery, feature space, black box and sanity on one method. Values: ``feature_curve``
    (len(CURVE_FACTORS), b) defended flags of the feature-space attack at each curve budget."""
    config, budgets = bench.config, dict(shard.budgets)
    pipeline, key = bench.served[shard.method]
    attack = deepfool(config)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    records = []

    def add(attacker: str, adversarial: torch.Tensor) -> torch.Tensor:
        defended = _decrypted_top1(pipeline, key, adversarial) == truth
        records.extend(_records(shard, shard.method, attacker, samples, defended, adversarial, images))
        return defended

    memo = ("key-recovery", shard.method)  # head name and cut-down model, built once per worker
    if memo not in bench.memo:
        head = public_head(pipeline, images[:1])
        recovered = recover_real_rows(*head_parameters(pipeline.model.get_submodule(head)))
        bench.memo[memo] = head, restricted_to_rows(pipeline, head, recovered.real_positions)
    head, attacked = bench.memo[memo]
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
        curve.append((_decrypted_top1(pipeline, key, adversarial) == truth).tolist())
    return ShardResult(records, values={"feature_curve": curve})


def adaptive_budgets(naive: list[ImageRecord], transfer: list[ShardResult]) -> dict[str, dict[str, float]]:
    """method → what its adaptive shards get: ``base_l2``, the median ‖r‖₂ of DeepFool on the
    original (the natural scale on this model), and ``naive_l2``, the naive attack's median ‖r‖₂."""
    base = statistics.median(l2 for result in transfer for l2 in result.values["l2"])
    methods = dict.fromkeys(r.method for r in naive if r.method != "original")
    return {m: {"base_l2": base, "naive_l2": statistics.median(r.l2 for r in naive if r.method == m)}
            for m in methods}


def collect_adaptive(bench: Workbench, naive: list[ImageRecord], transfer: list[ShardResult],
                     adaptive: list[tuple[Shard, ShardResult]],
                     budgets: dict[str, dict[str, float]]) -> AdaptiveResult:
    """The driver's summary of the transfer and adaptive shards (in plan order) of one model."""
    config, methods = bench.config, list(bench.protected)
    base = next(iter(budgets.values()))["base_l2"]
    result = AdaptiveResult(budgets={"curve_base_l2": base, "black_box_l2": config.blackbox_factor * base,
                                     "black_box_queries": config.blackbox_queries,
                                     "feature_space_steps": config.feature_steps}
                            | {f"feature_space_l2[{m}]": budgets[m]["naive_l2"] for m in methods})
    attacker_records = [AttackerRecord(r.model, r.method, "naive", r.image, r.defense_success, r.rho, r.l2)
                        for r in naive if r.method in methods]
    parts = transfer + [part for _, part in adaptive]
    attacker_records += [AttackerRecord(**r) for part in parts for r in part.records]
    order = {(m, a): i for i, (m, a) in enumerate((m, a) for m in methods for a in ATTACKERS)}
    # stable sort: within (method, attacker) the images stay in plan order
    result.records = sorted(attacker_records, key=lambda r: order[r.method, r.attacker])
    grid = [f * base for f in CURVE_FACTORS]
    for method, (pipeline, key) in bench.protected.items():
        head = public_head(pipeline, bench.first_image())
        recovered = recover_real_rows(*head_parameters(pipeline.model.get_submodule(head)))
        result.key_recovery[method] = {
            "recovered_pct": 100 * recovered.recovered_fraction(key.permutation[: key.n_real]),
            "oracle": recovered.oracle, "seconds": recovered.seconds}
        of = [r for r in result.records if r.method == method]
        naive_m = [r for r in of if r.attacker == "naive"]
        transfer_m = [r for r in of if r.attacker == "transfer"]
        flags = np.concatenate([np.array(r.values["feature_curve"], bool).reshape(len(grid), -1)
                                for shard, r in adaptive if shard.method == method], axis=1)
        result.curves[method] = {
            "naive": [(eps, _pct([r.defense_success or r.l2 > eps for r in naive_m])) for eps in grid],
            "transfer": [(eps, _pct([r.defense_success or r.l2 > eps for r in transfer_m])) for eps in grid],
            "feature-space": [(eps, _pct(flags[i])) for i, eps in enumerate(grid)],
        }
    return result


def _pct(flags) -> float:
    return 100 * float(np.mean(flags))


def summarize(records: list[AttackerRecord]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(model, method, attacker) → defense success % and median ρ."""
    groups: dict[tuple[str, str, str], list[AttackerRecord]] = {}
    for r in records:
        groups.setdefault((r.model, r.method, r.attacker), []).append(r)
    return {k: {"defense_success_pct": 100 * sum(r.defense_success for r in v) / len(v),
                "rho_median": statistics.median(r.rho for r in v), "images": len(v)}
            for k, v in groups.items()}
