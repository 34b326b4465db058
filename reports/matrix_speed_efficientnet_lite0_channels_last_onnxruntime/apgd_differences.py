"""The APGD decisions that differ between `before` and `channels-last-onnxruntime` on EfficientNet-Lite0 (both
losses; original and device head, the schemes where they differ): each image's result under the variants that
change one thing at a time, its margin (label logit − best other, the device's logits in eager torch, contiguous),
and how far apart the variants' adversarial images are. Output: apgd_differences.txt.

    PYTHONPATH=src python reports/matrix_speed_efficientnet_lite0_channels_last_onnxruntime/apgd_differences.py
"""
import json
import sys

import torch

sys.path.insert(0, "benchmarks")
import matrix_speed as ms

from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.stages.adaptive import target
from fakegradient.evaluation.workbench import Workbench

torch.set_num_threads(1)
folder = "reports/matrix_speed_efficientnet_lite0_channels_last_onnxruntime"
with open(f"{folder}/b.jsonl") as log:
    header = json.loads(log.readline())
config = EvaluationConfig(models=["efficientnet_lite0"], methods=header["methods"].split(","), data="photos",
                          limit=23, seed=0, adaptive=True, blackbox_queries=5000)
bench = Workbench.load(config, "efficientnet_lite0", 0)
images = bench.batch(0, 23)[:12]
pipelines = {m: s for m, (s, _) in bench.served.items()}
VARIANTS = ("before", "after", "channels-last", "onnxruntime", "channels-last-onnxruntime")
CASES = {("apgd", "original"): [2], ("apgd", "device-head"): [2, 3], ("apgd-dlr", "device-head"): [2, 6]}
answers, adversarial, decided = {}, {}, {}
for variant in VARIANTS:
    ms.use_variant(variant, pipelines, images[:1], answers)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    for name, method in CASES:
        ms.forget_attempts(bench)
        attempt, decided[variant, name, method] = ms.attack_scheme(bench, name, method, images, 0,
                                                                   header["budgets"], truth)
        adversarial[variant, name, method] = attempt.adversarial
        print(variant, name, method, "defended", decided[variant, name, method], flush=True)
ms.use_variant("after", pipelines, images[:1])  # eager torch, contiguous: the margins below
with torch.no_grad():
    truth = bench.original(images).argmax(1)
budget = header["budgets"]["whitebox_l2"]
for (name, method), photos in CASES.items():
    scheme = target(bench, method)
    for i in photos:
        print(f"\n{name} on {method}, photo {i} (0-based), label {truth[i].item()}, budget L2 {budget:.4f}")
        for variant in VARIANTS:
            x = adversarial[variant, name, method][i:i + 1]
            with torch.no_grad():
                logits = scheme.device(x)[0].double()
            others = logits.clone()
            others[truth[i]] = -float("inf")
            gap = (x - adversarial["before", name, method][i:i + 1]).norm().item()
            print(f"  {variant:<26} defended {decided[variant, name, method][i]!s:<5} margin "
                  f"{(logits[truth[i]] - others.max()).item():+.4f} (best other {others.argmax().item()}) "
                  f"r {(x - images[i:i + 1]).norm().item():.4f}  |x - x_before| {gap:.4f}")
