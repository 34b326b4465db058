"""Figures 7 and 8: model size and inference time, original vs protected."""

from __future__ import annotations

import io
import statistics
import time
from typing import Any

import torch
from torch import nn


def model_size(model: nn.Module) -> dict[str, int]:
    """Parameters and bytes of the serialised state dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return {"parameters": sum(p.numel() for p in model.parameters()), "bytes": buffer.getbuffer().nbytes}


@torch.no_grad()
def inference_times(
    models: dict[str, nn.Module], x: torch.Tensor, *, warmup: int = 3, repeats: int = 15
) -> dict[str, dict[str, float]]:
    """Seconds per forward pass of each model on ``x``: interleaved runs after warm-up.

    Returns median, 25th and 75th percentile per model. Synchronises CUDA around each run.
    """
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for model in models.values():
        for _ in range(warmup):
            model(x)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():  # interleaved: drift hits all models alike
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            samples[name].append(time.perf_counter() - start)
    out = {}
    for name, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4)
        out[name] = {"median_s": median, "q1_s": q1, "q3_s": q3}
    return out


def measure_overhead(served: dict[str, nn.Module], x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     repeats: int) -> dict[str, Any]:
    """Figures 7/8 inputs: size and batch-1 inference time of each served model on the pixel image x
    (1, C, H, W), normalised by ``mean`` and ``std`` (1, C, 1, 1) first."""
    return {
        "size": {method: model_size(model) for method, model in served.items()},
        "time": inference_times(served, (x - mean) / std, repeats=repeats),
        "input_shape": list(x.shape),
    }
