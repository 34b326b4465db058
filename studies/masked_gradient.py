"""Whether PGD and APGD on the served outputs have a gradient to follow: per photo and scheme, the served top-1's
lead over the runner-up and the input gradient of the cross-entropy of the served top-1 (the loss both ascend).

Where the top-1 leads every other output by more than 149 ln 2 ≈ 103.3, exp(−lead) underflows float32 and the
softmax is exactly one-hot: the gradient is exactly zero and the attack never leaves its random start (a masked
gradient, Athalye et al. 2018), whatever the defense does to the real answer. Same models, photos, seed and
schemes as the matrix (``fakegradient evaluate --adaptive``), one forward and backward pass per photo.

Then the matrix's APGD rows themselves (L2, the budget the matrix computes on these photos: twice the median
DeepFool ‖r‖₂ on the original; its steps and random starts): ``apgd`` with the cross-entropy and ``apgd-dlr``
with Croce & Hein's difference-of-logits ratio, a loss that depends on ratios of logit differences and so cannot
saturate, on the original and on the paper's scheme: does an attacker who only changes the loss get through,
paired on the same photos and random starts?

    python -m studies.masked_gradient --seed 0 --out reports/masked_gradient
    python -m studies.masked_gradient --from-stored --out reports/masked_gradient
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError

if TYPE_CHECKING:
    from fakegradient.evaluation.workbench import Workbench

from .kit import (
    command_line,
    markdown_table,
    parse_bool,
    rate_text,
    read_csv,
    run_study,
    study_parser,
    write_csv,
)

MODULE = "studies.masked_gradient"
MODELS = "mobilenet_v2:IMAGENET1K_V1,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
METHODS = ("original", "fake-gradient", "random-weight", "fake-gradient-hardened", "device-head")
UNDERFLOW = 149 * math.log(2)  # exp(-x) below float32's smallest subnormal 2^-149: rounds to 0
FIELDS = {"model": str, "method": str, "image": str, "lead": float, "gradient_max_abs": float,
          "gradient_zero": parse_bool}
ORIGINAL, ATTACKED = "original", ("original", "fake-gradient")  # the baseline; with the masked scheme
ROWS = {"cross_entropy": "apgd", "difference_logits_ratio": "apgd-dlr"}  # loss → the matrix's APGD row
LOSSES = tuple(ROWS)
ATTACK_FIELDS = {"model": str, "method": str, "loss": str, "image": str, "defended": parse_bool,
                 "served_top1_moved": parse_bool, "l2": float}


def lead_and_gradient(served: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, H, W) → (the served top-1's lead over the runner-up (B,), max |∂ CE(served(x), top-1) / ∂x|
    per image (B,)), each image's loss on its own (a batch's summed loss has the same per-image gradients)."""
    x = images.detach().clone().requires_grad_(True)
    outputs = served(x).flatten(1)
    top2 = outputs.detach().topk(2, dim=1).values
    loss = nn.functional.cross_entropy(outputs, outputs.detach().argmax(dim=1), reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    return (top2[:, 0] - top2[:, 1]).cpu(), gradient.flatten(1).abs().amax(dim=1).cpu()


def measure(models: list[str], seed: int) -> tuple[list[dict], list[dict], dict[str, float]]:
    """One row per (model, scheme, photo) of ``--data photos``, the matrix's served pipelines; one row per
    (model, attacked scheme, loss, photo) of APGD; each model's white-box L2 budget."""
    from tqdm.auto import tqdm

    from fakegradient.evaluation.config import EvaluationConfig
    from fakegradient.evaluation.workbench import Workbench, full_fp32

    rows, attacks, budgets = [], [], {}
    for spec in tqdm(models, desc="models", unit="model"):
        config = EvaluationConfig(models=[spec], methods=list(METHODS), data="photos", seed=seed, adaptive=True)
        with full_fp32():
            bench = Workbench.load(config, spec, seed)
            n = len(bench.samples)
            for method in METHODS:
                served = bench.served[method][0]
                for start in range(0, n, 4):
                    lead, gradient = lead_and_gradient(served, bench.batch(start, min(start + 4, n)))
                    for i, sample in enumerate(bench.samples[start:start + 4]):
                        rows.append({"model": spec, "method": method, "image": sample.path.name,
                                     "lead": float(lead[i]), "gradient_max_abs": float(gradient[i]),
                                     "gradient_zero": bool(gradient[i] == 0)})
            budgets[spec] = whitebox_budget(bench, spec)
            attacks += apgd_rows(bench, spec, budgets[spec])
    return rows, attacks, budgets


def whitebox_budget(bench: Workbench, spec: str) -> float:
    """The matrix's white-box L2 budget, by the matrix's own code: its transfer shards (DeepFool on the original)
    and :func:`fakegradient.evaluation.summary.adaptive_budgets`."""
    from fakegradient.evaluation.plan import plan
    from fakegradient.evaluation.stages import transfer
    from fakegradient.evaluation.summary import adaptive_budgets

    shards = plan(spec, [ORIGINAL], len(bench.samples), bench.config.batch_size, "transfer")
    results = [transfer.run(bench, s, bench.batch(s.start, s.stop), bench.samples[s.start:s.stop]) for s in shards]
    return adaptive_budgets(bench.config, results)["whitebox_l2"]


def apgd_rows(bench: Workbench, spec: str, eps: float) -> list[dict]:
    """The matrix's rows :data:`ROWS` at ``eps`` on each of :data:`ATTACKED`, slice by slice as the matrix runs
    them (same steps and random starts): defended = the device's real top-1 on the attacked photo is the
    original's clean top-1; ``served_top1_moved``: the attack reached its own goal."""
    from fakegradient.attacks.base import norms
    from fakegradient.evaluation.plan import plan
    from fakegradient.evaluation.stages.adaptive import target
    from fakegradient.evaluation.stages.attackers import ATTACKERS, Context
    from fakegradient.evaluation.stages.common import decrypted_top1

    rows = []
    for shard in plan(spec, [ORIGINAL], len(bench.samples), bench.config.batch_size):
        images = bench.batch(shard.start, shard.stop)
        with torch.no_grad():
            truth = bench.original(images).argmax(1)
        for method in ATTACKED:
            scheme = target(bench, method)
            with torch.no_grad():
                clean = scheme.served(images).argmax(1)
            for loss, row in ROWS.items():
                context = Context(bench, scheme, images, shard.start, {"whitebox_l2": eps}, truth)
                adversarial = ATTACKERS[row].run(context).adversarial
                defended = decrypted_top1(scheme.served, scheme.secret, adversarial) == truth
                with torch.no_grad():
                    moved = scheme.served(adversarial).argmax(1) != clean
                l2 = norms(adversarial - images, images)["l2"]
                for i, sample in enumerate(bench.samples[shard.start:shard.stop]):
                    rows.append({"model": spec, "method": method, "loss": loss, "image": sample.path.name,
                                 "defended": bool(defended[i]), "served_top1_moved": bool(moved[i]),
                                 "l2": float(l2[i])})
    return rows


def summarise(rows: list[dict]) -> dict:
    """model → scheme → photos with a zero gradient (k of n) and the lead's median, min and max."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["model"], {}).setdefault(row["method"], []).append(row)
    return {model: {method: {"zero_k": sum(r["gradient_zero"] for r in mine), "n": len(mine),
                             "lead_median": statistics.median(r["lead"] for r in mine),
                             "lead_min": min(r["lead"] for r in mine), "lead_max": max(r["lead"] for r in mine)}
                    for method, mine in by.items()} for model, by in out.items()}


def summarise_attacks(rows: list[dict], attacks: list[dict], budgets: dict[str, float]) -> dict:
    """model → the budget, (scheme, loss) → photos defended (k of n; of them, those whose gradient is exactly
    0 and those whose served top-1 the attack moved all the same), and the paired exact tests: the paper's
    scheme with one loss against the other, and against the original with the same loss."""
    from fakegradient.evaluation.paired import paired_test

    zero = {(r["model"], r["method"], r["image"]) for r in rows if r["gradient_zero"]}
    outcome: dict = {}  # model → arm → image → its APGD row
    for a in attacks:
        outcome.setdefault(a["model"], {}).setdefault(f"{a['method']}/{a['loss']}", {})[a["image"]] = a
    out = {}
    for model, arms in outcome.items():
        defended = {arm: {i: a["defended"] for i, a in mine.items()} for arm, mine in arms.items()}
        cells = {arm: {"k": sum(a["defended"] for a in mine.values()), "n": len(mine),
                       "defended_zero_gradient": sum(a["defended"] and (model, a["method"], i) in zero
                                                     for i, a in mine.items()),
                       "defended_served_moved": sum(a["defended"] and a["served_top1_moved"] for a in mine.values())}
                 for arm, mine in arms.items()}
        pairs = [("fake-gradient/cross_entropy", "fake-gradient/difference_logits_ratio"),
                 ("fake-gradient/difference_logits_ratio", "original/difference_logits_ratio"),
                 ("fake-gradient/cross_entropy", "original/cross_entropy")]
        tests = [{"a": a, "b": b, **asdict(paired_test(defended[a], defended[b]))} for a, b in pairs
                 if a in defended and b in defended]
        out[model] = {"whitebox_l2": budgets[model], "cells": cells, "paired": tests}
    return out


def write_report(out: Path, rows: list[dict], attacks: list[dict], run: dict) -> Path:
    """results.json, report.md and lead.png from the per-photo rows and the APGD rows."""
    from fakegradient.evaluation.figures import panel_grid, save_png

    summary = summarise(rows)
    apgd = summarise_attacks(rows, attacks, run["whitebox_l2"])
    write_bytes_atomic(out / "results.json", json.dumps({"summary": summary, "underflow_lead": UNDERFLOW,
                                                         "apgd": apgd, **run}, indent=2).encode())
    table = []
    for model, by in summary.items():
        for method, s in by.items():
            table.append([model, method, rate_text(s["zero_k"], s["n"]),
                          f"{s['lead_median']:.1f} [{s['lead_min']:.1f}–{s['lead_max']:.1f}]"])
    lines = ["# A gradient to follow? The cross-entropy PGD and APGD ascend, on the served outputs", "",
             f"`{run['command']}`", "", __doc__.split("\n\n")[1].replace("\n", " ").replace("``", "`"), "",
             *markdown_table(["model", "scheme", "photos whose gradient is exactly 0 (k/n [95 % Wilson])",
                              "served top-1 lead, median [min–max]"], table), "",
             "![served top-1 lead per photo](lead.png)", "",
             "## APGD with a loss that cannot saturate", "",
             ("Defended = the device's real top-1 on the attacked photo is the original's clean top-1 "
              "(`attacks.csv`); p: exact McNemar on the same photos and random starts."), "",
             *markdown_table(["model", "L2 budget", "scheme",
                              "cross-entropy: defended (of them: gradient 0; served top-1 moved)",
                              "difference of logits ratio: defended (of them: served top-1 moved)"],
                             apgd_table(apgd)), "",
             *markdown_table(["model", "A", "B", "photos", "defended by A only", "by B only", "p"],
                             [[model, t["a"], t["b"], t["pairs"], t["only_a"], t["only_b"], f"{t['p']:.2g}"]
                              for model, entry in apgd.items() for t in entry["paired"]]), ""]
    write_bytes_atomic(out / "report.md", "\n".join(lines).encode())
    fig, axes = panel_grid(len(summary), 7.0, 3.2, max_columns=1)
    for ax, (model, by) in zip(axes, summary.items()):
        for y, method in enumerate(by):
            mine = [r for r in rows if r["model"] == model and r["method"] == method]
            ax.scatter([max(r["lead"], 1e-3) for r in mine], [y] * len(mine),
                       c=["tab:red" if r["gradient_zero"] else "tab:blue" for r in mine], s=14, alpha=0.7)
        ax.axvline(UNDERFLOW, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yticks(range(len(by)), list(by))
        ax.set_title(f"{model}: red = cross-entropy gradient exactly 0", fontsize=10)
    axes[-1].set_xlabel("served top-1 lead over the runner-up (logits; dashed: float32 softmax underflow)")
    fig.tight_layout()
    save_png(fig, out / "lead.png")
    return out / "report.md"


def apgd_table(apgd: dict) -> list[list]:
    """One row per (model, attacked scheme) of the report's APGD table."""
    table = []
    for model, entry in apgd.items():
        for method in ATTACKED:
            ce, dlr = (entry["cells"].get(f"{method}/{loss}") for loss in LOSSES)
            if ce is None or dlr is None:
                continue
            table.append([model, f"{entry['whitebox_l2']:.3f}", method,
                          (f"{rate_text(ce['k'], ce['n'])} ({ce['defended_zero_gradient']}; "
                           f"{ce['defended_served_moved']})"),
                          f"{rate_text(dlr['k'], dlr['n'])} ({dlr['defended_served_moved']})"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/masked_gradient"),
                          "rebuild the report from per_image.csv, attacks.csv and run.json")
    parser.add_argument("--models", default=MODELS, help=f"comma-separated name[:weights] (default {MODELS})")
    args = parser.parse_args(argv)

    def work() -> Path:
        if args.from_stored:
            rows = read_csv(args.out / "per_image.csv", FIELDS)  # a clear error where it is missing
            attacks = read_csv(args.out / "attacks.csv", ATTACK_FIELDS)
            if not (args.out / "run.json").is_file():
                raise FakeGradientError(f"{args.out / 'run.json'} is missing: the study did not finish there")
            run = json.loads((args.out / "run.json").read_text())
            if "whitebox_l2" not in run:
                raise FakeGradientError(f"{args.out / 'run.json'} has no APGD budgets: made before the APGD runs; "
                                        "rerun the study")
            return write_report(args.out, rows, attacks, run)
        from fakegradient.evaluation.runner import environment

        args.out.mkdir(parents=True, exist_ok=True)

        rows, attacks, budgets = measure(args.models.split(","), args.seed)
        write_csv(args.out / "per_image.csv", rows)
        write_csv(args.out / "attacks.csv", attacks)
        run = {"command": command_line(MODULE, argv), "seed": args.seed, "whitebox_l2": budgets,
               "environment": environment()}
        report = write_report(args.out, rows, attacks, run)
        write_bytes_atomic(args.out / "run.json", json.dumps(run, indent=2).encode())
        return report

    return run_study(work)


if __name__ == "__main__":
    raise SystemExit(main())
