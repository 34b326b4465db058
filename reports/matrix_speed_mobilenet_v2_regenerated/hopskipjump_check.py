"""HopSkipJump on the device head, photos 0-3 (the matrix's first shard), at the committed run's budgets, under the
benchmark's variants that change one thing at a time: which of today's options moves its query counts on photos 1
and 3 (budget_check.txt: not the budget). Output: hopskipjump_check.txt.

    PYTHONPATH=src python reports/matrix_speed_mobilenet_v2_regenerated/hopskipjump_check.py
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
with open("reports/adaptive/results.json") as f:
    budget = json.load(f)["adaptive"][SPEC]["budgets"]
config = EvaluationConfig(models=[SPEC], methods=["original", "fake-gradient", "random-weight",
                                                  "fake-gradient-hardened", "device-head"],
                          data="photos", seed=0, adaptive=True)
bench = Workbench.load(config, SPEC, 0)
images = bench.batch(0, 4)
pipelines = {m: s for m, (s, _) in bench.served.items()}
answers = {}
for variant in ("before", "after", "channels-last", "onnxruntime", "channels-last-onnxruntime"):
    ms.use_variant(variant, pipelines, images[:1], answers)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    ms.forget_attempts(bench)
    attempt, defended = ms.attack_scheme(bench, "hopskipjump", "device-head", images, 0, budget, truth)
    print(f"{variant:<26} defended {defended} queries {attempt.queries.tolist()}", flush=True)
