"""One attacker on one scheme's shard of a committed matrix, at that matrix's budgets, under the variants
of benchmarks/matrix_speed.py that change one thing at a time: which option moves a decision or a query count
that a regeneration changed (benchmarks/compare_matrices.py lists them). Prints, per variant, each image's
decision (the device still gives the label) and query count.

    PYTHONPATH=src python benchmarks/variant_check.py reports/adaptive_efficientnet_lite1 \\
        efficientnet_lite1 apgd random-weight 8 4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import matrix_speed as ms

from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.workbench import Workbench

VARIANTS = ("before", "after", "channels-last", "onnxruntime", "channels-last-onnxruntime")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("committed", type=Path, help="the matrix folder whose budgets and settings to use")
    parser.add_argument("model", help="the model spec as in its results.json")
    parser.add_argument("attacker")
    parser.add_argument("scheme")
    parser.add_argument("start", type=int, help="the shard's first photo (0-based, as the matrix ran it)")
    parser.add_argument("count", type=int, help="the shard's images")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budgets-from", type=Path, help="another matrix folder (a regeneration) whose "
                        "budgets to attack at instead: whether a moved budget, not an option, moved the result")
    parser.add_argument("--threads", type=int, help="torch threads (default: the committed run's, its "
                        "environment.cpu_threads; a regeneration's Ray workers run one)")
    args = parser.parse_args(argv)
    with open(args.committed / "results.json") as f:
        results = json.load(f)
    budgets = results["adaptive"][args.model]["budgets"]
    if args.budgets_from is not None:
        with open(args.budgets_from / "results.json") as f:
            budgets = json.load(f)["adaptive"][args.model]["budgets"]
    known = {f.name for f in dataclasses.fields(EvaluationConfig)} - {"channels_last", "query_runtime"}
    settings = {k: v for k, v in results["config"].items() if k in known}  # the variant sets the options
    threads = args.threads or int(results["environment"]["cpu_threads"])
    torch.set_num_threads(threads)
    photos = f"photos {args.start}-{args.start + args.count - 1}"
    print(f"{args.model}, {args.attacker} on {args.scheme}, {photos}, {threads} torch thread(s), budgets "
          f"{budgets}", flush=True)
    config = EvaluationConfig(**{**settings, "models": [args.model]})
    bench = Workbench.load(config, args.model, 0)
    images = bench.batch(0, args.start + args.count)[args.start:]
    pipelines = {m: s for m, (s, _) in bench.served.items()}
    answers: dict = {}
    for variant in args.variants.split(","):
        ms.use_variant(variant, pipelines, images[:1], answers)
        with torch.no_grad():
            truth = bench.original(images).argmax(1)
        ms.forget_attempts(bench)
        attempt, defended = ms.attack_scheme(bench, args.attacker, args.scheme, images, args.start, budgets,
                                             truth)
        queries = None if attempt is None or attempt.queries is None else attempt.queries.tolist()
        print(f"{variant:<26} defended {defended} queries {queries}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
