"""What the shards of one model are computed from: the original and served pipelines, the samples,
full-fp32 numerics, subnormals flushed where asked, and the configured DeepFool."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks.deepfool import DeepFool
from ..data import Sample, load_batch
from ..methods import ORIGINAL
from ..schemes.base import Secret
from .config import EvaluationConfig, load_samples
from .pipeline import Normalized, load_pipeline, protected_pipeline
from .runtimes import answer_with


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 on CUDA while evaluating: borderline adversarial decisions must not depend on batch size."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@contextlib.contextmanager
def flush_subnormals(enabled: bool = True) -> Iterator[None]:
    """This thread's float32 subnormals flushed to zero (``enabled``; CPU DAZ/FTZ, where torch supports it: x86
    with SSE3, AArch64) or kept (IEEE) while open, the mode before restored after. Other threads keep theirs
    (torch's intra-op threads too: with more than one, part of a computation keeps IEEE subnormals; the matrix's
    Ray workers run one), a thread started inside inherits it, CUDA is untouched. A backward pass through
    subnormal values can be much slower on Intel CPUs (an earlier session measured about 10x on a Xeon; none on
    an AMD EPYC, ``reports/flush_subnormals/``): a saturated cross-entropy on Fake Gradient's served outputs
    makes such values, on the way to an input gradient whose L2 step vanishes either way."""
    before = _flushing()
    if enabled == before or not torch.set_flush_denormal(enabled):  # nothing to change, or no such mode here
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _flushing() -> bool:
    """Whether this thread flushes float32 subnormals to zero now (2**-100 * 2**-40 is subnormal)."""
    return (torch.tensor([2.0**-100]) * 2.0**-40).item() == 0.0


def deepfool(config: EvaluationConfig) -> DeepFool:
    """The configured DeepFool (naive, transfer, key-recovery and sanity attackers all use it)."""
    return DeepFool(config.candidates, config.overshoot, config.max_iter, (0.0, 1.0) if config.clip else None)


def served_pipelines(original: Normalized, config: EvaluationConfig, seed: int,
                     probe: torch.Tensor) -> dict[str, tuple[Normalized, Secret | None]]:
    """method → (served pipeline, what the device holds), the original served as is. ``probe`` (1, C, H, W)
    is image 0. With ``config.channels_last`` every pipeline's weights, the original's too, go channels-last; each
    pipeline's calls without a graph are answered by ``config.query_runtime`` (its threads: torch's now)."""
    def build(method: str) -> tuple[Normalized, Secret | None]:
        if method == ORIGINAL:
            return original, None
        return protected_pipeline(original, method, scale=config.scale, seed=seed, probe=probe, bias=config.bias)

    with full_fp32():
        served = {method: build(method) for method in config.methods}
    pipelines = list({id(p): p for p in (original, *(p for p, _ in served.values()))}.values())  # each once
    if config.channels_last:  # in place, values unchanged: each convolution then runs channels-last
        for pipeline in pipelines:
            pipeline.to(memory_format=torch.channels_last)
    answer_with(config.query_runtime, pipelines, probe, torch.get_num_threads())
    return served


@dataclass
class Workbench:
    """The driver hands it the images it loaded (all of them without Ray); a Ray worker builds it
    with :meth:`load` and reads each shard's images from the data path. ``seed`` is the run's
    evaluation seed (experiment keys and random rows)."""

    config: EvaluationConfig
    original: Normalized
    served: dict[str, tuple[Normalized, Secret | None]]
    samples: list[Sample]
    seed: int
    images: torch.Tensor | None = None  # (B, C, H, W) in [0, 1], all samples
    pixel: Callable | None = None  # the pixel preprocessing, when images is None
    memo: dict[Any, Any] = field(default_factory=dict)  # per-model things shards share

    @classmethod
    def load(cls, config: EvaluationConfig, spec: str, seed: int) -> Workbench:
        original, pixel = load_pipeline(spec, config.device)
        samples = load_samples(config)
        probe = load_batch([samples[0].path], pixel).to(config.device)  # the driver traces on image 0 too
        return cls(config, original, served_pipelines(original, config, seed, probe), samples, seed, None, pixel)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Images [start, stop) as (b, C, H, W) on the configured device."""
        if self.images is not None:
            return self.images[start:stop]
        return load_batch([s.path for s in self.samples[start:stop]], self.pixel).to(self.config.device)

    @property
    def protected(self) -> dict[str, tuple[Normalized, Secret]]:
        return {m: (p, k) for m, (p, k) in self.served.items() if k is not None}
