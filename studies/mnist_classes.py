"""Why MNIST differs (number of classes): the real ImageNet MobileNetV2 with its head restricted to k of
its 1000 classes, protected and attacked as ``fakegradient evaluate`` does, on the 23 photos.

Each photo gets its own head of k classes: its original top-1 (the full model's clean prediction) and
k − 1 others, drawn uniformly without replacement from the other 999 by
``numpy.random.default_rng([seed, k, photo index])`` (``--selection random``), or the k classes the full
model ranks highest on that photo (``--selection top``: DeepFool's neighbours). k = 1000 is the full head.
Then ``evaluate_model`` (DeepFool, top-10 candidates, on the served model: original / fake-gradient /
random-weight, keys from ``--seed``) on that photo. Per k: ``<selection>_k<k>/per_image.csv`` and
``run.json``, skipped when present; ``report.md`` is rewritten from every folder present.

    python -m studies.mnist_classes --ks 10,100,1000 --selection random --seed 0 --out reports/mnist/classes
    python -m studies.mnist_classes --from-stored --out reports/mnist/classes
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fakegradient.atomic import write_bytes_atomic
from fakegradient.data import Sample, load_batch
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.config import PHOTOS_DATA, EvaluationConfig, load_samples
from fakegradient.evaluation.pipeline import Normalized, load_pipeline
from fakegradient.evaluation.records import aggregate_by
from fakegradient.evaluation.runner import environment, evaluate_model

from .heads import SELECTIONS, head_classes, restrict_head
from .kit import (
    aggregate_rate,
    command_line,
    done_before,
    int_list,
    markdown_table,
    rate_text,
    records_from_csv,
    run_study,
    study_parser,
    write_records_csv,
)

MODULE = "studies.mnist_classes"
SPEC = "mobilenet_v2:IMAGENET1K_V1"
METHODS = ("original", "fake-gradient", "random-weight")


def run_k(k: int, args, folder: Path) -> None:
    full, pixel = load_pipeline(SPEC, "cpu")
    samples = load_samples(EvaluationConfig(data=PHOTOS_DATA))
    images = load_batch([s.path for s in samples], pixel)
    with torch.no_grad():
        logits = full(images)
    config = EvaluationConfig(models=(SPEC,), methods=METHODS, seed=args.seed, data=PHOTOS_DATA,
                              heatmap_images=0, timing_repeats=2)
    name = f"mobilenet_v2 k={k}"
    records, chosen, start = [], {}, time.perf_counter()
    for i, sample in enumerate(tqdm(samples, desc=f"k={k}")):
        classes = head_classes(args.selection, k, logits[i], args.seed, i)
        chosen[sample.path.name] = classes.tolist()
        head = restrict_head(full.model, classes, (images[i : i + 1] - full.mean) / full.std)
        pipeline = Normalized(head, full.mean.flatten().tolist(), full.std.flatten().tolist()).eval()
        where = np.flatnonzero(classes == sample.label) if sample.label is not None else []
        local = Sample(sample.path, int(where[0]) if len(where) else None)  # label in the subset's indices
        evaluation = evaluate_model(name, pipeline, images[i : i + 1], [local], config, progress=False)
        for r in evaluation.records:
            if classes[r.original_top1] != int(logits[i].argmax()):
                raise FakeGradientError(f"{sample.path.name}: the restricted head changed the clean top-1")
        records += evaluation.records
    folder.mkdir(parents=True, exist_ok=True)
    write_records_csv(folder / "per_image.csv", records)
    run = {"k": k, "selection": args.selection, "seed": args.seed, "model": SPEC, "photos": len(samples),
           "classes": chosen, "seconds": time.perf_counter() - start, "command": args.command,
           "environment": environment(), "torch_threads": torch.get_num_threads()}
    write_bytes_atomic(folder / "run.json", json.dumps(run, indent=2).encode())


def report(out: Path) -> Path:
    runs = []
    for run_file in sorted(out.glob("*/run.json")):
        run = json.loads(run_file.read_text())
        runs.append((run, records_from_csv(run_file.parent / "per_image.csv")))
    if not runs:
        raise FakeGradientError(f"no complete run folder under {out}")
    runs.sort(key=lambda r: (SELECTIONS.index(r[0]["selection"]), r[0]["k"]))
    lines = ["# Number of classes: ImageNet MobileNetV2 restricted to k of its classes", "",
             f"`{SPEC}` (real ImageNet weights), the 23 photos of `--data photos` (20 labelled ImageNet validation "
             "photos in foolbox's wheel + 3 unlabelled photos bundled in matplotlib and scikit-learn). Each photo is "
             "attacked on its own head of k classes that contains its original top-1: `random` = the top-1 and "
             "k − 1 classes drawn uniformly from the other 999 (`numpy.random.default_rng([seed, k, photo index])`), "
             "`top` = the k classes the full model ranks highest on the photo. k = 1000 is the full head (the "
             "`reports/table1/` run). Then `evaluate_model` exactly as `fakegradient evaluate`: our DeepFool "
             "(top-10 candidates among the served outputs, overshoot 0.02, ≤ 50 iterations, no clipping) on the "
             "served model, S_a = 20, b_F = b_o, keys seeded. Rates: k/n = %, [Wilson score 95 % interval]. "
             "Ratio: per photo ‖r‖₂ on Fake Gradient / ‖r‖₂ on the original model (same head), median.", ""]
    rows = []
    for run, records in runs:
        agg = {method: a for (_, method), a in aggregate_by(records).items()}
        fg = agg["fake-gradient"]
        fake = [r for r in records if r.method == "fake-gradient"]
        n_real = run["k"]
        mirrors = sum(r.plain_top1 == n_real + r.original_top1 for r in fake)
        ratio = "—" if fg["l2_ratio_median"] is None else format(fg["l2_ratio_median"], ".2f")
        rows.append([run["k"], run["selection"] if run["k"] < 1000 else "all",
                     aggregate_rate(fg, "defense_success_pct"),
                     f"{ratio} (n={fg['l2_ratio_n']})", aggregate_rate(agg["original"], "defense_success_pct"),
                     aggregate_rate(agg["random-weight"], "defense_success_pct"), aggregate_rate(fg, "fake_output_pct"),
                     rate_text(mirrors, len(fake)), f"{run['seconds']:.0f}"])
    lines += markdown_table(["classes k", "selection", "Fake Gradient: defense success",
                             "median ‖r‖ ratio FG / original", "original: defense (sanity: the attack wins)",
                             "Random Weight: defense", "Fake Gradient: fake output served",
                             "mirror fake output wins (Table 2)", "seconds"], rows)
    env = runs[0][0]["environment"]
    lines += ["", f"Machine: {env['platform']}, torch {env['torch']}, {runs[0][0]['torch_threads']} torch thread(s), "
                  "a contended 2-core VM (seconds are not a speed claim). Files: `<selection>_k<k>/per_image.csv` "
                  "(per photo and method; indices are the restricted head's), `run.json` (the classes of each "
                  "photo's head, command, environment).", ""]
    path = out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/mnist/classes"),
                          "rewrite report.md from the run folders under --out")
    parser.add_argument("--ks", default="10,100,1000", help="comma-separated class counts, 2..1000")
    parser.add_argument("--selection", default="random", choices=SELECTIONS)
    args = parser.parse_args(argv)
    args.command = command_line(MODULE, argv)

    def work() -> Path:
        if not args.from_stored:
            ks = int_list(args.ks, "--ks")
            if any(not 2 <= k <= 1000 for k in ks):
                raise FakeGradientError("--ks: each k must be in 2..1000")
            for k in ks:
                folder = args.out / (f"{args.selection}_k{k}" if k < 1000 else "all_k1000")
                if not done_before(folder):
                    run_k(k, args, folder)
        return report(args.out)

    return run_study(work)


if __name__ == "__main__":
    sys.exit(main())
