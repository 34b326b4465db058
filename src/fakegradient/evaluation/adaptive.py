"""Adaptive attackers (the paper tried only the naive one): transfer, key recovery, feature space,
black box, and a sanity attacker holding the key. Defense success = decrypted top-1 unchanged."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks.base import norms
from ..attacks.blackbox import square_attack
from ..attacks.deepfool import DeepFool
from ..attacks.feature_space import FeatureSpacePGD
from ..attacks.key_recovery import recover_real_rows
from ..head import build_head, head_parameters, replace_module, trace_head
from ..key import Key
from .pipeline import Normalized

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
    curves: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)  # method → attacker → (eps, %)


class Decrypted(nn.Module):
    """The device's view, differentiable: real logits (B, N) = key.decrypt(served(x))."""

    def __init__(self, served: nn.Module, key: Key):
        super().__init__()
        self.served, self.key = served, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key.decrypt(self.served(x))


def _batched(fn, images: torch.Tensor, batch: int, *extra: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(images[i : i + batch], *(e[i : i + batch] for e in extra))
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def _decrypted_top1(served: nn.Module, key: Key, x: torch.Tensor, batch: int) -> torch.Tensor:
    return _batched(lambda xb: key.decrypt(served(xb)).argmax(1), x, batch)


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


def run_adaptive(name: str, original: Normalized, served: dict[str, tuple[Normalized, Key]], images: torch.Tensor,
                 image_names: list[str], naive: dict[str, list[tuple[bool, float, float]]],
                 original_top1: torch.Tensor, config, progress: bool = True) -> AdaptiveResult:
    """All attackers against every protected method of one model. ``naive[method]`` holds the naive
    attack's per-image (defense success, ρ, ‖r‖₂) from the main evaluation."""
    result = AdaptiveResult()
    batch = config.batch_size
    attack = DeepFool(config.candidates, config.overshoot, config.max_iter, (0.0, 1.0) if config.clip else None)
    bar = tqdm(total=len(served) * 5 + 1, desc=f"adaptive {name}", unit="attack", disable=not progress)

    transfer_adv = _batched(lambda xb: attack(original, xb).adversarial, images, batch)
    transfer_size = norms(transfer_adv - images, images)
    base = statistics.median(transfer_size["l2"].tolist())  # the natural DeepFool scale on this model
    grid = [f * base for f in CURVE_FACTORS]
    result.budgets = {"curve_base_l2": base, "black_box_l2": config.blackbox_factor * base,
                      "black_box_queries": config.blackbox_queries, "feature_space_steps": config.feature_steps}
    bar.update()
    truth = original_top1.to(images.device)

    def add(method: str, attacker: str, adv: torch.Tensor, key: Key, serving: nn.Module) -> torch.Tensor:
        defended = _decrypted_top1(serving, key, adv, batch) == truth
        size = norms(adv - images, images)
        for i, image in enumerate(image_names):
            result.records.append(AttackerRecord(name, method, attacker, image, bool(defended[i]),
                                                 float(size["rho"][i]), float(size["l2"][i])))
        return defended

    for method, (pipeline, key) in served.items():
        bar.set_postfix_str(method)
        naive_flags = naive[method]
        for i, image in enumerate(image_names):
            ok, rho, l2 = naive_flags[i]
            result.records.append(AttackerRecord(name, method, "naive", image, ok, rho, l2))
        transfer_ok = add(method, "transfer", transfer_adv, key, pipeline)

        head = public_head(pipeline, images[:1])
        recovered = recover_real_rows(*head_parameters(pipeline.model.get_submodule(head)))
        result.key_recovery[method] = {
            "recovered_pct": 100 * recovered.recovered_fraction(key.permutation[: key.n_real]),
            "oracle": recovered.oracle, "seconds": recovered.seconds}
        attacked = restricted_to_rows(pipeline, head, recovered.real_positions)
        add(method, "key-recovery", _batched(lambda xb: attack(attacked, xb).adversarial, images, batch), key, pipeline)
        bar.update()

        head_name = "model." + head
        naive_l2 = statistics.median(l2 for _, _, l2 in naive_flags)
        result.budgets[f"feature_space_l2[{method}]"] = naive_l2
        pgd = FeatureSpacePGD(steps=config.feature_steps)
        eps = torch.full((len(images),), naive_l2)
        add(method, "feature-space", _batched(lambda xb, e: pgd(pipeline, head_name, xb, e), images, batch, eps),
            key, pipeline)
        bar.update()

        bb = _batched(lambda xb: square_attack(pipeline, xb, config.blackbox_factor * base,
                                               config.blackbox_queries), images, batch)
        add(method, "black-box", bb, key, pipeline)
        bar.update()

        sanity = Decrypted(pipeline, key)
        add(method, "sanity", _batched(lambda xb: attack(sanity, xb).adversarial, images, batch), key, pipeline)
        bar.update()

        naive_ok = torch.tensor([ok for ok, _, _ in naive_flags])
        naive_l2s = torch.tensor([l2 for _, _, l2 in naive_flags])
        curves = {"naive": [], "transfer": [], "feature-space": []}
        for eps_value in grid:
            curves["naive"].append((eps_value, 100 * (naive_ok | (naive_l2s > eps_value)).float().mean().item()))
            within = transfer_size["l2"].cpu() <= eps_value
            curves["transfer"].append((eps_value, 100 * (transfer_ok.cpu() | ~within).float().mean().item()))
            e = torch.full((len(images),), eps_value)
            adv = _batched(lambda xb, ee: pgd(pipeline, head_name, xb, ee), images, batch, e)
            defended = _decrypted_top1(pipeline, key, adv, batch) == truth
            curves["feature-space"].append((eps_value, 100 * defended.float().mean().item()))
        result.curves[method] = curves
        bar.update()
    bar.close()
    return result


def summarize(records: list[AttackerRecord]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(model, method, attacker) → defense success % and median ρ."""
    groups: dict[tuple[str, str, str], list[AttackerRecord]] = {}
    for r in records:
        groups.setdefault((r.model, r.method, r.attacker), []).append(r)
    return {k: {"defense_success_pct": 100 * sum(r.defense_success for r in v) / len(v),
                "rho_median": statistics.median(r.rho for r in v), "images": len(v)}
            for k, v in groups.items()}
