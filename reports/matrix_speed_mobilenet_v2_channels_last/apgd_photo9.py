"""The one decision the layout changed: APGD on the hardened scheme, the matrix's 12 APGD photos, both layouts, as
benchmarks/matrix_speed.py runs it; the device's logits on photo 9 (0-based). Output: apgd_photo9.txt.

    PYTHONPATH=src python reports/matrix_speed_mobilenet_v2_channels_last/apgd_photo9.py
"""
import json, torch
import importlib.util, sys
spec = importlib.util.spec_from_file_location("ms", "benchmarks/matrix_speed.py"); ms = importlib.util.module_from_spec(spec); sys.modules["ms"] = ms; spec.loader.exec_module(ms)
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.workbench import Workbench, full_fp32
from fakegradient.evaluation.stages import adaptive
from fakegradient.evaluation.stages.adaptive import target
from fakegradient.evaluation.stages.attackers import Context
torch.set_num_threads(1)
header = json.loads(open("reports/matrix_speed_mobilenet_v2_channels_last/gradient.jsonl").readline())
config = EvaluationConfig(models=["mobilenet_v2:IMAGENET1K_V1"], methods=header["methods"].split(","), data="photos", limit=23, seed=0, adaptive=True, blackbox_queries=5000)
with full_fp32():
    bench = Workbench.load(config, "mobilenet_v2:IMAGENET1K_V1", 0)
    images = bench.batch(0, 23)[:12]
    pipelines = {m: s for m, (s, _) in bench.served.items()}
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    for variant in ("after", "channels-last"):
        ms.use_variant(variant, pipelines, images[:1])
        ms.forget_attempts(bench)
        scheme = target(bench, "fake-gradient-hardened")
        att = adaptive.attack("apgd", Context(bench, scheme, images, 0, header["budgets"], truth))
        with torch.no_grad():
            logits = scheme.device(att.adversarial)
        i = 9
        top2 = logits[i].topk(2)
        print(variant, "img9 label", truth[i].item(), "top2", top2.indices.tolist(), top2.values.tolist(),
              "label logit", logits[i, truth[i]].item(), "r", (att.adversarial[i] - images[i]).norm().item(),
              "defended", (logits.argmax(1) == truth).tolist()[i], flush=True)
    ms.use_variant("after", pipelines, images[:1])
