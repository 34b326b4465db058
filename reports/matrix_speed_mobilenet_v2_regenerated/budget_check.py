"""The regenerated matrix's differences from reports/adaptive/ that are not the counter fix, rerun with both speed
options (as benchmarks/matrix_speed.py's variant `channels-last-onnxruntime`) at the committed run's budgets and at
the regenerated run's (its DeepFool median moved the budgets by about 2e-6, relative), shard by shard as the matrix
ran them (same first image, same seeds). Output: budget_check.txt (the default cases);
budget_check_fake_gradient_square.txt (`square:fake-gradient:4:1`: photo 4 alone, as the first image of its
shard it gets the same probe and the same first draws of the shard's generator, and Square runs its images one at
a time).

    PYTHONPATH=src python reports/matrix_speed_mobilenet_v2_regenerated/budget_check.py RUN_DIR \
        [ATTACKER:SCHEME:START:N ...]
"""
import json
import sys

import torch

sys.path.insert(0, "benchmarks")
import matrix_speed as ms

from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.workbench import Workbench

torch.set_num_threads(1)
SPEC = "mobilenet_v2:IMAGENET1K_V1"


def budgets(folder: str) -> dict:
    with open(f"{folder}/results.json") as f:
        return json.load(f)["adaptive"][SPEC]["budgets"]


runs = {"committed": budgets("reports/adaptive"), "regenerated": budgets(sys.argv[1])}
config = EvaluationConfig(models=[SPEC], methods=["original", "fake-gradient", "random-weight",
                                                  "fake-gradient-hardened", "device-head"],
                          data="photos", seed=0, adaptive=True)
bench = Workbench.load(config, SPEC, 0)
images = bench.batch(0, 29)
pipelines = {m: s for m, (s, _) in bench.served.items()}
ms.use_variant("channels-last-onnxruntime", pipelines, images[:1])
with torch.no_grad():
    truth = bench.original(images).argmax(1)
CASES = [("square", "original", 4, 4), ("square", "original", 8, 4), ("hopskipjump", "device-head", 0, 4),
         ("apgd", "random-weight", 0, 4)]  # (attacker, scheme, the shard's first image, images); shards of 4
cases = [(a, m, int(s), int(n)) for a, m, s, n in (c.split(":") for c in sys.argv[2:])] or CASES
for name, method, start, count in cases:
    for run, budget in runs.items():
        ms.forget_attempts(bench)
        shard = slice(start, start + count)
        attempt, defended = ms.attack_scheme(bench, name, method, images[shard], start, budget, truth[shard])
        if attempt is None:
            raise SystemExit(f"{name} does not apply to {method}")
        queries = None if attempt.queries is None else attempt.queries.tolist()
        print(f"{name} on {method}, photos {start}-{start + count - 1}, {run} budgets (black-box L2 "
              f"{budget['blackbox_l2']:.7f}, white-box {budget['whitebox_l2']:.8f}): defended {defended}, "
              f"queries {queries}", flush=True)
