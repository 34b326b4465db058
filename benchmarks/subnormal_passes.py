"""Paired, interleaved: one input-gradient pass (forward with graph + backward of the served top-1's cross-entropy) of
Fake Gradient's served model on each photo of ``--data photos``, IEEE subnormals vs flushed to zero; 1 torch thread.

    PYTHONPATH=src python benchmarks/subnormal_passes.py [MODEL] [REPS]

Prints one JSON line per photo (median seconds each way, max |gradient| and L2 norm each way) and writes them to
reports/flush_subnormals/pass_times_MODEL.json."""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fakegradient.atomic import write_bytes_atomic
from fakegradient.data import load_batch
from fakegradient.evaluation.config import EvaluationConfig, load_samples
from fakegradient.evaluation.pipeline import load_pipeline, protected_pipeline
from fakegradient.evaluation.workbench import flush_subnormals


def grad_pass(served: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input gradient (1, C, H, W) of the served top-1's cross-entropy at x (1, C, H, W)."""
    x = x.clone().requires_grad_(True)
    out = served(x)
    loss = torch.nn.functional.cross_entropy(out, out.argmax(1).detach())
    g, = torch.autograd.grad(loss, x)
    return g


def main() -> None:
    torch.set_num_threads(1)
    model = sys.argv[1] if len(sys.argv) > 1 else "efficientnet_lite0"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    config = EvaluationConfig(models=[model], methods=["original", "fake-gradient"], data="photos", seed=0)
    samples = load_samples(config)
    original, pixel = load_pipeline(model)
    images = load_batch([s.path for s in samples], pixel)
    served, _ = protected_pipeline(original, "fake-gradient", scale=config.scale, seed=0, probe=images[:1],
                                   bias=config.bias)
    rows = []
    for i, s in enumerate(samples):
        x = images[i:i + 1]
        t = {False: [], True: []}
        g = {}
        grad_pass(served, x)  # warm-up
        for r in range(reps):
            for flush in ((False, True) if r % 2 == 0 else (True, False)):
                with flush_subnormals(flush):
                    begin = time.perf_counter()
                    g[flush] = grad_pass(served, x)
                    t[flush].append(time.perf_counter() - begin)
        row = {"image": s.path.name, "ieee_s": statistics.median(t[False]), "flushed_s": statistics.median(t[True]),
               "max_abs_ieee": g[False].abs().max().item(), "max_abs_flushed": g[True].abs().max().item(),
               "norm_ieee": g[False].norm().item(), "norm_flushed": g[True].norm().item()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(__file__).resolve().parents[1] / "reports" / "flush_subnormals" / f"pass_times_{model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, json.dumps({"model": model, "reps": reps, "rows": rows}, indent=1).encode())


if __name__ == "__main__":
    main()
