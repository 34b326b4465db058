"""The driver's summary of the attacker stages of one model: the budgets of round 2, then the scheme ×
attacker matrix (each cell with its sanity baseline), key recovery, privacy and the budget curves
(pure functions of the shard results)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import defaults
from ..methods import ORIGINAL
from .config import EvaluationConfig
from .intervals import Rate
from .paired import paired_test
from .plan import Shard, ShardResult
from .records import AttackerRecord, ImageRecord
from .roofline import KINDS, fraction
from .stages.attackers import ATTACKERS, CURVE_FACTORS


@dataclass
class AdaptiveResult:
    records: list[AttackerRecord] = field(default_factory=list)  # per image, in (method, attacker) order
    budgets: dict[str, float] = field(default_factory=dict)  # base_l2, whitebox_l2, blackbox_l2, ...
    key_recovery: dict[str, dict[str, dict]] = field(default_factory=dict)  # method → attacker → recovery
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # method → attacker → seconds
    # method → attacker → own_s, own_cpu_s (None: a shard without it), roofline_s, passes
    # (kind → [calls, rows]), reused (rows), summed over shards; empty for a run stored before it was measured
    timing: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # attacker → method → [(eps, defense success %)]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    device_cost: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → bytes kept, decrypt s
    multi_budget: set[str] = field(default_factory=set)  # attackers run at each curve budget

    def matrix(self) -> list[dict[str, Any]]:
        """One row per (scheme, attacker): k of n defended, rate and Wilson interval, budget, median
        queries, the sanity baseline (the same attacker on the original) and whether it is too weak; for
        an iterative white-box attack, whether it is under-powered (:meth:`deepfool_within`); for a scheme,
        the exact McNemar test against the original on the same images (``p_vs_original``, and the images
        defended only here / only on the original)."""
        groups: dict[tuple[str, str], list[AttackerRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.method, r.attacker].append(r)
        baselines = {a: Rate(sum(r.defense_success for r in v), len(v)) for (m, a), v in groups.items()
                     if m == ORIGINAL}
        original = {a: {r.image: r.defense_success for r in v} for (m, a), v in groups.items() if m == ORIGINAL}
        rows = []
        for (method, attacker), items in groups.items():
            rate, base = Rate(sum(r.defense_success for r in items), len(items)), baselines.get(attacker)
            queries = [r.queries for r in items if r.queries is not None]
            budget = ATTACKERS[attacker].budget
            within = self.deepfool_within(attacker)
            paired = None if method == ORIGINAL or attacker not in original else paired_test(
                {r.image: r.defense_success for r in items}, original[attacker])
            rows.append({
                "method": method, "attacker": attacker, "k": rate.k, "n": rate.n, "rate_pct": rate.pct,
                "ci95_low_pct": rate.ci95_pct[0], "ci95_high_pct": rate.ci95_pct[1],
                "budget_l2": self.budgets[budget] if budget else None,
                "median_l2": statistics.median(r.l2 for r in items),
                "median_queries": statistics.median(queries) if queries else None,
                "baseline_k": base.k if base else None, "baseline_n": base.n if base else None,
                "too_weak": base is None or (base.n - base.k) / base.n < defaults.TOO_WEAK,
                "deepfool_within_k": within, "under_powered": within is not None and base is not None
                and base.n - base.k < within,
                "p_vs_original": paired.p if paired else None,
                "defended_only_here": paired.only_a if paired else None,
                "defended_only_original": paired.only_b if paired else None,
                "seconds": self.seconds.get(method, {}).get(attacker),
            } | self.timing_columns(method, attacker))
        return rows

    def timing_columns(self, method: str, attacker: str) -> dict[str, Any]:
        """The timing table's columns of one row: ``own_seconds`` (its own wall time: a memoised computation
        counted once, at the row that ran it), ``own_cpu_seconds`` (its process's CPU seconds meanwhile,
        every thread; None in runs made before it was measured), ``reused`` (the rows whose computations it
        used, "; "-joined), the passes it ran (``<kind>_calls``/``<kind>_rows``), ``roofline_seconds`` (those
        passes timed alone) and ``roofline_fraction`` = roofline / own seconds (None where it ran no pass).
        All None where the run predates the measurement."""
        t = self.timing.get(method, {}).get(attacker)
        passes = (t or {}).get("passes", {})
        out: dict[str, Any] = {"own_seconds": t["own_s"] if t else None,
                               "own_cpu_seconds": t.get("own_cpu_s") if t else None,
                               "reused": "; ".join(t["reused"]) if t else None}
        for kind in KINDS:
            calls, rows = passes.get(kind, [None, None]) if t else (None, None)
            out |= {f"{kind}_calls": calls, f"{kind}_rows": rows}
        return out | {"roofline_seconds": t["roofline_s"] if t else None,
                      "roofline_fraction": fraction(t["roofline_s"], t["own_s"]) if t else None}

    def timing_overhead(self) -> float:
        """Seconds spent timing passes for the rooflines (outside every row's own seconds)."""
        return sum(t.get("timing_s", 0.0) for by in self.timing.values() for t in by.values())

    def distinct_seconds(self, measure: str = "own_s") -> float | None:
        """Σ own seconds (``own_cpu_s``: own CPU seconds) over every row: each memoised computation once (None
        before it was measured)."""
        values = [t.get(measure) for by in self.timing.values() for t in by.values()]
        return sum(values) if values and None not in values else None

    def deepfool_within(self, attacker: str) -> int | None:
        """For an iterative white-box attacker: on the unprotected model, the images it ran on where DeepFool
        (the naive row) changed the top-1 within the same L2 budget; an attacker breaking fewer is
        *under-powered*. None for other attackers or without both rows."""
        if not ATTACKERS[attacker].iterative:
            return None
        eps = self.budgets[ATTACKERS[attacker].budget]
        deepfool = {r.image: r for r in self.records if r.method == ORIGINAL and r.attacker == "naive"}
        images = [r.image for r in self.records if r.method == ORIGINAL and r.attacker == attacker]
        if not images or not all(i in deepfool for i in images):
            return None
        return sum(not deepfool[i].defense_success and deepfool[i].l2 <= eps * (1 + 1e-5) for i in images)

    def privacy(self) -> dict[str, dict[str, Any]]:
        """method → the key-recovery attacker that names the most clean real top-1s: k of n, and its name."""
        best: dict[str, dict[str, Any]] = {}
        for (method, attacker), items in _by([r for r in self.records if r.names_top1 is not None]).items():
            k = sum(r.names_top1 for r in items)
            if method not in best or k > best[method]["k"]:
                best[method] = {"attacker": attacker, "k": k, "n": len(items)}
        return best


def adaptive_budgets(config: EvaluationConfig, transfer: list[ShardResult]) -> dict[str, float]:
    """What the adaptive shards get: ``base_l2``, the median ‖r‖₂ of DeepFool on the original (the
    natural scale on this model), and the white- and black-box L2 budgets, multiples of it."""
    base = statistics.median(l2 for result in transfer for l2 in result.values["l2"])
    return {"base_l2": base, "whitebox_l2": config.budget_factor * base, "blackbox_l2": config.blackbox_factor * base,
            "blackbox_queries": float(config.blackbox_queries)}


def collect_adaptive(methods: list[str], naive: list[ImageRecord], transfer: list[ShardResult],
                     adaptive: list[tuple[Shard, ShardResult]], budgets: dict[str, float]) -> AdaptiveResult:
    """The transfer and adaptive shards (in plan order) of one model's ``methods``."""
    records = [AttackerRecord(r.model, r.method, "naive", r.image, r.defense_success, r.rho, r.l2)
               for r in naive if r.method in methods]
    records += [AttackerRecord(**r) for part in transfer + [part for _, part in adaptive] for r in part.records]
    order = {(m, a): i for i, (m, a) in enumerate((m, a) for m in methods for a in ATTACKERS)}
    result = AdaptiveResult(sorted(records, key=lambda r: order[r.method, r.attacker]), dict(budgets))
    flags: dict[tuple[str, str], dict[float, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for shard, part in adaptive:
        seconds = result.seconds.setdefault(shard.method, {})
        for attacker, value in part.values["seconds"].items():
            seconds[attacker] = seconds.get(attacker, 0.0) + value
        for attacker, value in part.values.get("timing", {}).items():  # absent in shards stored before
            _add_timing(result.timing.setdefault(shard.method, {}), attacker, value)
        # the same in every shard that ran the attacker (one limited by --attacker-images runs in the first ones)
        result.key_recovery.setdefault(shard.method, {}).update(part.values["key_recovery"])
        for attacker, points in part.values["curves"].items():
            for eps, defended in points:
                flags[shard.method, attacker][eps] += defended
    if any("timing" not in part.values for _, part in adaptive):  # some shards stored before it was measured
        result.timing = {}  # a partial sum would pass for the whole: none at all
    grid = [f * budgets["base_l2"] for f in CURVE_FACTORS]
    for (method, attacker), items in _by(result.records).items():
        if (method, attacker) in flags:  # run at each budget
            result.multi_budget.add(attacker)
            points = [(eps, 100 * float(np.mean(v))) for eps, v in sorted(flags[method, attacker].items())]
        else:  # success within eps: the attack found a change of the real top-1 no larger than eps
            budget = ATTACKERS[attacker].budget
            eps_grid = sorted(set(grid) | ({budgets[budget]} if budget else set()))
            points = [(eps, 100 * float(np.mean([r.defense_success or r.l2 > eps * (1 + 1e-5) for r in items])))
                      for eps in eps_grid]
        result.curves.setdefault(attacker, {})[method] = points
    return result


def _add_timing(by_attacker: dict[str, dict[str, Any]], attacker: str, part: dict[str, Any]) -> None:
    """Sums one shard's timing of ``attacker`` into ``by_attacker`` (reused rows: their union)."""
    total = by_attacker.setdefault(attacker, {"own_s": 0.0, "own_cpu_s": 0.0, "roofline_s": 0.0, "reused": [],
                                              "passes": {kind: [0, 0] for kind in KINDS}})
    total["own_s"] += part["own_s"]
    cpu = part.get("own_cpu_s")  # absent in shards stored before it was measured: then none for the row
    total["own_cpu_s"] = None if cpu is None or total["own_cpu_s"] is None else total["own_cpu_s"] + cpu
    total["roofline_s"] += part["roofline_s"]
    total["timing_s"] = total.get("timing_s", 0.0) + part.get("timing_s", 0.0)
    total["reused"] = sorted(set(total["reused"]) | set(part["reused"]))
    for kind, (calls, rows) in part["passes"].items():
        total["passes"][kind] = [total["passes"][kind][0] + calls, total["passes"][kind][1] + rows]


def _by(records: list[AttackerRecord]) -> dict[tuple[str, str], list[AttackerRecord]]:
    out: dict[tuple[str, str], list[AttackerRecord]] = defaultdict(list)
    for r in records:
        out[r.method, r.attacker].append(r)
    return out
