"""The driver's summary of the attacker stages of one model: budgets for round 2, the adaptive table,
key recovery and the success-vs-budget curves (pure functions of the shard results)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from ..methods import ORIGINAL
from .config import EvaluationConfig
from .plan import Shard, ShardResult
from .records import ATTACKERS, AttackerRecord, ImageRecord
from .stages.adaptive import CURVE_FACTORS


@dataclass
class AdaptiveResult:
    records: list[AttackerRecord] = field(default_factory=list)
    key_recovery: dict[str, dict] = field(default_factory=dict)  # method → recovered %, oracle, seconds
    budgets: dict[str, float] = field(default_factory=dict)  # what each budgeted attacker was given
    # method → attacker → [(eps, defense success %)]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)


def adaptive_budgets(naive: list[ImageRecord], transfer: list[ShardResult]) -> dict[str, dict[str, float]]:
    """method → what its adaptive shards get: ``base_l2``, the median ‖r‖₂ of DeepFool on the
    original (the natural scale on this model), and ``naive_l2``, the naive attack's median ‖r‖₂."""
    base = statistics.median(l2 for result in transfer for l2 in result.values["l2"])
    methods = dict.fromkeys(r.method for r in naive if r.method != ORIGINAL)
    return {m: {"base_l2": base, "naive_l2": statistics.median(r.l2 for r in naive if r.method == m)}
            for m in methods}


def collect_adaptive(config: EvaluationConfig, methods: list[str], naive: list[ImageRecord],
                     transfer: list[ShardResult], adaptive: list[tuple[Shard, ShardResult]],
                     budgets: dict[str, dict[str, float]]) -> AdaptiveResult:
    """The transfer and adaptive shards (in plan order) of one model's protected ``methods``."""
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
    for method in methods:
        shards = [part for shard, part in adaptive if shard.method == method]
        result.key_recovery[method] = shards[0].values["key_recovery"]  # the same file in every shard
        of = [r for r in result.records if r.method == method]
        flags = np.concatenate([np.array(r.values["feature_curve"], bool).reshape(len(grid), -1)
                                for r in shards], axis=1)
        result.curves[method] = {
            attacker: [(eps, _pct([r.defense_success or r.l2 > eps for r in of if r.attacker == attacker]))
                       for eps in grid] for attacker in ("naive", "transfer")
        } | {"feature-space": [(eps, _pct(flags[i])) for i, eps in enumerate(grid)]}
    return result


def _pct(flags) -> float:
    return 100 * float(np.mean(flags))
