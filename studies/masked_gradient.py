"""Whether PGD and APGD on the served outputs have a gradient to follow: per photo and scheme, the served top-1's
lead over the runner-up and the input gradient of the cross-entropy of the served top-1 (the loss both ascend).

Where the top-1 leads every other output by more than 149 ln 2 ≈ 103.3, exp(−lead) underflows float32 and the
softmax is exactly one-hot: the gradient is exactly zero and the attack never leaves its random start (a masked
gradient, Athalye et al. 2018), whatever the defense does to the real answer. Same models, photos, seed and
schemes as the matrix (``fakegradient evaluate --adaptive``), one forward and backward pass per photo.

    python -m studies.masked_gradient --seed 0 --out reports/masked_gradient
    python -m studies.masked_gradient --from-stored --out reports/masked_gradient
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch
from torch import nn

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError

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


def lead_and_gradient(served: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, H, W) → (the served top-1's lead over the runner-up (B,), max |∂ CE(served(x), top-1) / ∂x|
    per image (B,)), each image's loss on its own (a batch's summed loss has the same per-image gradients)."""
    x = images.detach().clone().requires_grad_(True)
    outputs = served(x).flatten(1)
    top2 = outputs.detach().topk(2, dim=1).values
    loss = nn.functional.cross_entropy(outputs, outputs.detach().argmax(dim=1), reduction="sum")
    (gradient,) = torch.autograd.grad(loss, x)
    return (top2[:, 0] - top2[:, 1]).cpu(), gradient.flatten(1).abs().amax(dim=1).cpu()


def measure(models: list[str], seed: int) -> list[dict]:
    """One row per (model, scheme, photo) of ``--data photos``, the matrix's served pipelines."""
    from tqdm.auto import tqdm

    from fakegradient.evaluation.config import EvaluationConfig
    from fakegradient.evaluation.workbench import Workbench, full_fp32

    rows = []
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


def write_report(out: Path, rows: list[dict], run: dict) -> Path:
    """results.json, report.md and lead.png from the per-photo rows."""
    from fakegradient.evaluation.figures import panel_grid, save_png

    summary = summarise(rows)
    write_bytes_atomic(out / "results.json", json.dumps({"summary": summary, "underflow_lead": UNDERFLOW,
                                                         **run}, indent=2).encode())
    table = []
    for model, by in summary.items():
        for method, s in by.items():
            table.append([model, method, rate_text(s["zero_k"], s["n"]),
                          f"{s['lead_median']:.1f} [{s['lead_min']:.1f}–{s['lead_max']:.1f}]"])
    lines = ["# A gradient to follow? The cross-entropy PGD and APGD ascend, on the served outputs", "",
             f"`{run['command']}`", "", __doc__.split("\n\n")[1].replace("\n", " ").replace("``", "`"), "",
             *markdown_table(["model", "scheme", "photos whose gradient is exactly 0 (k/n [95 % Wilson])",
                              "served top-1 lead, median [min–max]"], table), "",
             "![served top-1 lead per photo](lead.png)", ""]
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


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/masked_gradient"), "rebuild the report from per_image.csv")
    parser.add_argument("--models", default=MODELS, help=f"comma-separated name[:weights] (default {MODELS})")
    args = parser.parse_args(argv)

    def work() -> Path:
        if args.from_stored:
            rows = read_csv(args.out / "per_image.csv", FIELDS)  # a clear error where it is missing
            if not (args.out / "run.json").is_file():
                raise FakeGradientError(f"{args.out / 'run.json'} is missing: the study did not finish there")
            return write_report(args.out, rows, json.loads((args.out / "run.json").read_text()))
        from fakegradient.evaluation.runner import environment

        args.out.mkdir(parents=True, exist_ok=True)

        rows = measure(args.models.split(","), args.seed)
        write_csv(args.out / "per_image.csv", rows)
        run = {"command": command_line(MODULE, argv), "seed": args.seed, "environment": environment()}
        report = write_report(args.out, rows, run)
        write_bytes_atomic(args.out / "run.json", json.dumps(run, indent=2).encode())
        return report

    return run_study(work)


if __name__ == "__main__":
    raise SystemExit(main())
