"""How steep a trained MNIST model is around its held-out digits: why DeepFool's ‖r‖ is what it is.

DeepFool's first step is the linear estimate margin / ‖∇ₓ margin‖₂ (margin = top-1 logit − runner-up), so a
small ‖r‖ comes from small margins (near-constant logits), from a large input gradient (a steep model), or from
an error in how ‖r‖ is measured. :func:`measure` takes those apart on a few digits, and checks the usual
BatchNorm suspects: eval-mode running statistics vs batch statistics, running statistics recomputed on the
training digits, and how much the model relies on low-variance channels (BN ``eps`` raised, which caps each
channel's gain ``γ/√(σ²+eps)``). :mod:`studies.seven_mnist` ``--sensitivity`` stores its output and the
report renders it.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from fakegradient.attacks.base import norms
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.evaluation.pipeline import Normalized

from . import mnist

CAPPED_EPS = 1e-3  # BatchNorm eps for the "gain capped" check (PyTorch's default is 1e-5)
LOW_VARIANCE = 1e-3  # a BatchNorm channel whose running variance is below this counts as low-variance


def margins_and_gradients(pipeline: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of x (b, C, H, W): (top-1 − runner-up logit (b,), ‖∇ₓ(top-1 − runner-up)‖₂ (b,)), eval mode."""
    pipeline.eval()
    x = x.detach().clone().requires_grad_(True)
    top = pipeline(x).topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    grad = torch.autograd.grad(margin.sum(), x)[0]
    return margin.detach(), grad.flatten(1).norm(dim=1)


def _with_batch_statistics(pipeline: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers normalise with each batch's own statistics (dropout stays off)."""
    copied = copy.deepcopy(pipeline).eval()
    for m in copied.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    return copied


@torch.no_grad()
def recalibrated(pipeline: nn.Module, x_train: torch.Tensor, batch: int = 250) -> nn.Module:
    """A copy whose BatchNorm running statistics are recomputed (cumulative average) on x_train (B, C, H, W)."""
    copied = copy.deepcopy(pipeline).eval()
    bns = [m for m in copied.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for b in x_train.split(batch):
        copied(b)
    return copied.eval()


def _capped(pipeline: nn.Module, eps: float) -> nn.Module:
    copied = copy.deepcopy(pipeline).eval()
    for m in copied.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = eps
    return copied


def _accuracy(pipeline: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((torch.cat([pipeline(b).argmax(1) for b in x.split(250)]) == y).float().mean())


def _local(pipeline: nn.Module, x: torch.Tensor, attack: DeepFool) -> dict[str, float]:
    """Medians over x (b, C, H, W): margin, gradient norm, their ratio, DeepFool's ‖r‖₂ and ‖r‖∞ (pixels)."""
    margin, grad = margins_and_gradients(pipeline, x)
    result = attack(pipeline.eval(), x)
    sizes = norms(result.adversarial - x, x)
    med = lambda t: statistics.median(t.tolist())
    return {"margin_median": med(margin), "grad_norm_median": med(grad), "linear_estimate_median": med(margin / grad),
            "deepfool_l2_median": med(sizes["l2"]), "deepfool_linf_median": med(sizes["linf"]),
            "deepfool_fooled": int(result.success.sum())}


def measure(pipeline: nn.Module, x_eval: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
            x_train: torch.Tensor, attack: DeepFool | None = None) -> dict:
    """The sensitivity record of a trained ``pipeline`` (pixel images in [0, 1]): DeepFool and the linear
    estimate on x_eval (n, C, H, W), accuracies on x_test (B, C, H, W) / y_test (B,) under eval-mode running
    statistics, batch statistics, statistics recomputed on x_train, and BN eps raised to ``CAPPED_EPS``."""
    attack = attack or DeepFool()
    pipeline.eval()
    recal = recalibrated(pipeline, x_train)
    capped = _capped(pipeline, CAPPED_EPS)
    bns = [m for m in pipeline.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gains = [(m.weight.abs() / (m.running_var + m.eps).sqrt()).detach() for m in bns if m.weight is not None]
    return {
        "n": len(x_eval),
        "accuracy": {"eval": _accuracy(pipeline, x_test, y_test),
                     "batch_statistics": _accuracy(_with_batch_statistics(pipeline), x_test, y_test),
                     "recalibrated": _accuracy(recal, x_test, y_test),
                     "bn_eps_capped": _accuracy(capped, x_test, y_test)},
        "held_out": len(x_test),
        "eval": _local(pipeline, x_eval, attack),
        "recalibrated": _local(recal, x_eval, attack),
        "bn_eps_capped": _local(capped, x_eval, attack),
        "capped_eps": CAPPED_EPS,
        "batchnorm": {"layers": len(bns),
                      "channels": sum(m.num_features for m in bns),
                      "low_variance_channels": sum(int((m.running_var < LOW_VARIANCE).sum()) for m in bns),
                      "low_variance": LOW_VARIANCE,
                      "max_gain": max((float(g.max()) for g in gains), default=float("nan"))},
    }


def train_and_measure(arch: str, spec: mnist.Recipe, size: int, seed: int, n: int, data, device: str = "cpu") -> dict:
    """Train ``arch`` exactly as :mod:`studies.seven_mnist` does (seeded split, init and batches), then
    :func:`measure` it on the first ``n`` held-out digits (all 1000 for the accuracies)."""
    x_all, y_all = data
    train_idx, test_idx = mnist.split(len(x_all), seed)
    x_train, y_train = mnist.to_pixels(x_all[train_idx], size), torch.from_numpy(y_all[train_idx])
    x_test, y_test = mnist.to_pixels(x_all[test_idx], size), torch.from_numpy(y_all[test_idx])
    torch.manual_seed(seed)
    pipeline = Normalized(mnist.build(arch), mnist.MEAN, mnist.STD)
    start = time.perf_counter()
    mnist.train(pipeline, x_train, y_train, spec, arch, device=device, generator=torch.Generator().manual_seed(seed))
    train_seconds = time.perf_counter() - start
    pipeline = pipeline.cpu()
    record = measure(pipeline, x_test[:n], x_test, y_test, x_train)
    return {"arch": arch, "recipe": spec.name, "size": size, "seed": seed, "device": device,
            "train_seconds": train_seconds, "torch": torch.__version__, "torch_threads": torch.get_num_threads()} | record
