"""Per-image records of every attacker and the aggregates computed from them (pure functions)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from ..errors import InvalidArgument


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

    @property
    def functionality(self) -> bool:
        return self.decrypted_top1 == self.original_top1

    @property
    def defense_success(self) -> bool:
        """The decrypted real top-1 on the attacked image is still the original clean top-1."""
        return self.adversarial_top1 == self.original_top1


# attacker → what it holds (the report's column); {placeholders} are filled from the run's budgets
ATTACKERS = {
    "naive": "served model (the paper's threat model), DeepFool",
    "transfer": "public unprotected base model, DeepFool; images sent through the protected pipeline",
    "key-recovery": "served model file: guesses the real rows, DeepFool on them",
    "feature-space": "served model minus its head; L2 PGD on the penultimate features, budget = naive median ‖r‖₂",
    "black-box": "served outputs only; ART Square attack, L2 ≤ {black_box_l2:.3f}, {black_box_queries} queries",
    "sanity": "the key (decrypted pipeline), DeepFool: shows the evaluation can fail the defense",
}


@dataclass
class AttackerRecord:
    """One image attacked by one attacker on one protected method."""

    model: str
    method: str
    attacker: str  # a key of ATTACKERS
    image: str
    defense_success: bool  # the decrypted top-1 on the attacked image is the original clean top-1
    rho: float
    l2: float


def summarize(records: list[AttackerRecord]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(model, method, attacker) → defense success %, median ρ and the number of images."""
    groups: dict[tuple[str, str, str], list[AttackerRecord]] = defaultdict(list)
    for r in records:
        groups[(r.model, r.method, r.attacker)].append(r)
    return {k: {"defense_success_pct": 100 * sum(r.defense_success for r in v) / len(v),
                "rho_median": statistics.median(r.rho for r in v), "images": len(v)}
            for k, v in groups.items()}


def aggregate(records: list[ImageRecord]) -> dict[str, float]:
    """Table 1's metrics (percentages) and perturbation statistics over ``records``."""
    if not records:
        raise InvalidArgument("no records to aggregate")
    n = len(records)

    def pct(flags) -> float:
        return 100.0 * sum(flags) / n

    rho = [r.rho for r in records]
    return {
        "images": n,
        "fake_output_pct": pct(r.served_top1_fake for r in records),
        "original_functionality_pct": pct(r.functionality for r in records),
        "defense_success_pct": pct(r.defense_success for r in records),
        "attack_changed_served_pct": pct(r.attack_changed_served for r in records),
        "rho_mean": statistics.fmean(rho),
        "rho_median": statistics.median(rho),
        "l2_median": statistics.median(r.l2 for r in records),
        "linf_median": statistics.median(r.linf for r in records),
        "iterations_mean": statistics.fmean(r.iterations for r in records),
        "original_accuracy_pct": (
            100.0 * sum(r.original_top1 == r.label for r in records if r.label is not None)
            / max(1, sum(r.label is not None for r in records))
        ),
    }


def aggregate_by(records: list[ImageRecord]) -> dict[tuple[str, str], dict[str, float]]:
    """``aggregate`` per (model, method), in first-seen order."""
    groups: dict[tuple[str, str], list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[(record.model, record.method)].append(record)
    return {group: aggregate(items) for group, items in groups.items()}


def fake_class_table(records: list[ImageRecord], n_real: int) -> dict[int, list[tuple[str, int]]]:
    """Table 2: per original class, the (image, un-permuted top-1 index in [0, 2N)) of its images."""
    table: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for r in records:
        table[r.original_top1].append((r.image, r.plain_top1))
    return dict(sorted(table.items()))
