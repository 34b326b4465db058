"""Per-image records of every attacker and the aggregates computed from them (pure functions)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..methods import ORIGINAL
from .intervals import Rate

RATES = {  # metric → what counts as a success for one image (Table 1's rates, each with a Wilson interval)
    "fake_output_pct": lambda r: r.served_top1_fake,
    "original_functionality_pct": lambda r: r.functionality,
    "defense_success_pct": lambda r: r.defense_success,
    "attack_changed_served_pct": lambda r: r.attack_changed_served,
}


@dataclass
class ImageRecord:
    """One image attacked on one (model, method). Class indices are real classes 0..N-1."""

    model: str
    method: str  # "original", "fake-gradient", "random-weight"
    image: str
    label: int | None  # ground truth, when known
    original_top1: int  # the unprotected model on the clean image
    served_top1: int  # position of the served model's top-1 (what the cloud / attacker sees)
    served_top1_fake: bool  # that position holds a fake output (always False for "original")
    plain_top1: int  # top-1 over all 2N outputs before the key permutation (Table 2); = original_top1 for "original"
    decrypted_top1: int  # the device's answer on the clean image
    adversarial_top1: int  # the device's answer on the attacked image
    attack_changed_served: bool  # the attack changed the served model's top-1 (its own goal)
    rho: float  # ‖r‖₂ / ‖x‖₂
    l2: float
    linf: float
    iterations: int
    # ‖r_z‖₂/‖z‖₂ in the normalised tensor z = (x - mean)/std (the released code's space); the
    # pixel ρ above is ‖r‖₂/‖x‖₂ with x in [0, 1]
    rho_normalized: float = float("nan")

    @property
    def functionality(self) -> bool:
        return self.decrypted_top1 == self.original_top1

    @property
    def defense_success(self) -> bool:
        """The decrypted real top-1 on the attacked image is still the original clean top-1."""
        return self.adversarial_top1 == self.original_top1


@dataclass
class AttackerRecord:
    """One image attacked by one attacker (evaluation/stages/attackers.py) on one scheme."""

    model: str
    method: str
    attacker: str  # a key of stages.attackers.ATTACKERS
    image: str
    defense_success: bool  # the device's real top-1 on the attacked image is the original clean top-1
    rho: float
    l2: float
    queries: int | None = None  # sent to the served model (query-based attacks)
    names_top1: bool | None = None  # key recovery: the cloud names the real top-1 of the clean image


def rates(records: list[ImageRecord]) -> dict[str, Rate]:
    """Table 1's rates as k of n; ``original_accuracy_pct`` over the labelled images only (absent if none)."""
    out = {metric: Rate(sum(bool(hit(r)) for r in records), len(records)) for metric, hit in RATES.items()}
    labelled = [r for r in records if r.label is not None]
    if labelled:
        out["original_accuracy_pct"] = Rate(sum(r.original_top1 == r.label for r in labelled), len(labelled))
    return out


def aggregate(records: list[ImageRecord], l2_ratios: list[float] | None = None) -> dict[str, float]:
    """Table 1's metrics (percentages; each rate also as ``<metric>_k``, ``_n`` and ``_ci95``: its Wilson
    95 % interval in percent) and perturbation statistics over ``records``. ``l2_ratios``: the per-image
    ‖r‖₂ here / ‖r‖₂ on the original model, whose median is ``l2_ratio_median``."""
    if not records:
        raise InvalidArgument("no records to aggregate")
    out: dict = {"images": len(records)}
    for metric, rate in rates(records).items():
        out |= {metric: rate.pct, f"{metric}_k": rate.k, f"{metric}_n": rate.n, f"{metric}_ci95": list(rate.ci95_pct)}
    out.setdefault("original_accuracy_pct", None)  # no labelled image
    out.setdefault("original_accuracy_pct_n", 0)
    rho = [r.rho for r in records]
    rho_z = [r.rho_normalized for r in records]
    ratios = [x for x in (l2_ratios or []) if x == x]  # nan (no original record) dropped
    return out | {
        "rho_mean": statistics.fmean(rho),
        "rho_median": statistics.median(rho),
        "rho_normalized_mean": statistics.fmean(rho_z),
        "rho_normalized_median": statistics.median(rho_z),
        "l2_median": statistics.median(r.l2 for r in records),
        "linf_median": statistics.median(r.linf for r in records),
        "iterations_mean": statistics.fmean(r.iterations for r in records),
        "l2_ratio_median": statistics.median(ratios) if ratios else None,
        "l2_ratio_n": len(ratios),
    }


def l2_ratios(records: list[ImageRecord]) -> list[float]:
    """Per record (same order): its ‖r‖₂ / the original model's ‖r‖₂ on the same (model, image);
    nan for the original's own records, when the original was not attacked, or its ‖r‖₂ is 0."""
    base = {(r.model, r.image): r.l2 for r in records if r.method == ORIGINAL}
    out = []
    for r in records:
        b = base.get((r.model, r.image))
        out.append(float("nan") if r.method == ORIGINAL or not b else r.l2 / b)
    return out


def aggregate_by(records: list[ImageRecord]) -> dict[tuple[str, str], dict[str, float]]:
    """``aggregate`` per (model, method), in first-seen order."""
    groups: dict[tuple[str, str], list[ImageRecord]] = defaultdict(list)
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record, ratio in zip(records, l2_ratios(records)):
        groups[(record.model, record.method)].append(record)
        ratios[(record.model, record.method)].append(ratio)
    return {group: aggregate(items, ratios[group]) for group, items in groups.items()}


def fake_class_table(records: list[ImageRecord], n_real: int) -> dict[int, list[tuple[str, int]]]:
    """Table 2: per original class, the (image, un-permuted top-1 index in [0, 2N)) of its images."""
    table: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for r in records:
        table[r.original_top1].append((r.image, r.plain_top1))
    return dict(sorted(table.items()))
