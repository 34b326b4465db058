"""``evaluate``: orchestration only — plan each model's shards, take finished ones from the store,
run the rest on an executor, and gather Table 1/2, the adaptive table and Figures 6-8."""

from __future__ import annotations

import platform
import secrets
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Sample, load_batch
from ..errors import FakeGradientError
from ..machine import cpu_model
from ..methods import ORIGINAL
from .config import EvaluationConfig, load_samples
from .executors import Executor, LocalExecutor
from .overhead import measure_overhead
from .pipeline import Normalized, load_pipeline
from .plan import Shard, ShardResult, plan
from .records import ImageRecord
from .stages.adaptive import check_limits
from .stages.attackers import ATTACKERS
from .store import ShardStore
from .summary import AdaptiveResult, adaptive_budgets, collect_adaptive
from .workbench import Workbench, served_pipelines


@dataclass
class ModelEvaluation:
    """Everything measured on one model (records of every method, overhead, a few perturbations)."""

    name: str
    n_real: int
    records: list[ImageRecord]
    overhead: dict[str, Any]
    heatmaps: dict[str, torch.Tensor]  # method → (k, C, H, W) perturbations of the first k images
    heatmap_images: torch.Tensor  # (k, C, H, W) the clean images
    adaptive: AdaptiveResult | None = None
    seed: int | None = None  # the seed the evaluation keys and random rows were drawn with


@dataclass
class EvaluationResult:
    config: EvaluationConfig
    evaluations: list[ModelEvaluation]
    skipped: list[dict[str, str]]
    environment: dict[str, str]

    @property
    def records(self) -> list[ImageRecord]:
        return [r for e in self.evaluations for r in e.records]


def evaluate(config: EvaluationConfig, progress: bool = True, store: ShardStore | None = None,
             executor: Executor | None = None) -> EvaluationResult:
    """Load each model by name (skipping those whose weights are absent) and evaluate it.

    ``store`` keeps finished shards on disk (resume); ``executor`` runs shards elsewhere (Ray), where the
    workers load model and images themselves and the driver loads only what it plots or times.
    """
    samples = load_samples(config)
    if config.adaptive:
        check_limits(config.images_per_attacker)  # before any work
    if store is not None:
        store.begin(config.to_dict(), EvaluationConfig.defaults())
    evaluations, skipped = [], []
    for spec in config.models:
        try:
            pipeline, pixel = load_pipeline(spec, config.device)
        except FakeGradientError as exc:
            skipped.append({"model": spec, "reason": str(exc)})
            continue
        on_driver = samples if executor is None else samples[: max(1, config.heatmap_images)]
        images = load_batch([s.path for s in on_driver], pixel).to(config.device)
        evaluations.append(evaluate_model(spec, pipeline, images, samples, config, progress=progress,
                                          store=store, executor=executor))
    return EvaluationResult(config, evaluations, skipped, environment())


def evaluate_model(name: str, pipeline: Normalized, images: torch.Tensor, samples: list[Sample],
                   config: EvaluationConfig, progress: bool = True, store: ShardStore | None = None,
                   executor: Executor | None = None) -> ModelEvaluation:
    """Evaluate one pixel-space pipeline (normalisation + classifier) on images (B, C, H, W) in [0, 1].

    Every protected variant is made from ``pipeline.model`` with :func:`protect`; the attack sees
    only the served (protected) pipeline, the device decrypts with the key. With a remote ``executor``
    ``images`` may hold only the first images (for heatmaps): the workers load the rest.
    """
    store = store or ShardStore(None)
    executor = executor or LocalExecutor()
    original = pipeline.eval()
    # evaluation keys: seeded so that every worker builds the same protected model (they are
    # experiment keys, never deployed); a run without --seed draws one from the CSPRNG, once per run
    seed = config.seed if config.seed is not None else store.seed(name, lambda: secrets.randbits(63))
    bench = Workbench(config, original, served_pipelines(original, config, seed, images[:1]), samples, seed,
                      images)
    n = len(samples)

    def run(shards: list[Shard], desc: str) -> list[ShardResult]:
        return _run_round(executor, bench, store, shards, desc, progress)

    deepfool_shards = plan(name, list(config.methods), n, config.batch_size)
    transfer_shards = plan(name, [ORIGINAL], n, config.batch_size, "transfer") if config.adaptive else []
    first = run(deepfool_shards + transfer_shards, f"DeepFool {name}")
    results, transfer = first[: len(deepfool_shards)], first[len(deepfool_shards) :]
    records = [ImageRecord(**r) for result in results for r in result.records]  # plan order: no gaps, no repeats
    heatmaps = {}
    for method in config.methods:
        parts = [r.perturbation for s, r in zip(deepfool_shards, results)
                 if s.method == method and r.perturbation is not None]
        if parts:
            heatmaps[method] = torch.from_numpy(np.concatenate(parts))
    adaptive = None
    if transfer_shards:
        budgets = adaptive_budgets(config, transfer)
        methods = list(config.methods)
        adaptive_shards = plan(name, methods, n, config.batch_size, "adaptive", dict.fromkeys(methods, budgets),
                               attackers=tuple(ATTACKERS))
        adaptive_results = run(adaptive_shards, f"adaptive {name}")
        adaptive = collect_adaptive(methods, records, transfer, list(zip(adaptive_shards, adaptive_results)), budgets)
        adaptive.device_cost = device_cost(bench, images[:1])
    served_models = {ORIGINAL: original.model} | {m: p.model for m, (p, _) in bench.served.items()}
    n_real = next((k.n_real for _, k in bench.protected.values()), 0)
    overhead = measure_overhead(served_models, images[:1], original.mean, original.std, config.timing_repeats)
    return ModelEvaluation(name, n_real, records, overhead, heatmaps, images[: config.heatmap_images].cpu(),
                           adaptive, seed)


def device_cost(bench: Workbench, probe: torch.Tensor, repeats: int = 200) -> dict[str, dict[str, float]]:
    """method → what the device keeps (bytes) and its numpy time per image to get the real top-1 from the
    served outputs of ``probe`` (1, C, H, W): the key's lookup, or the head's matrix product (split)."""
    out = {}
    for method, (served, secret) in bench.served.items():
        with torch.no_grad():
            outputs = served(probe).flatten(1).cpu().numpy()
        decide = (lambda o: o.argmax(1)) if secret is None else secret.top1  # the original: nothing to decrypt
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decide(outputs)
            times.append(time.perf_counter() - start)
        out[method] = {"device_bytes": 0 if secret is None else len(secret.to_bytes()),
                       "decrypt_s_median": statistics.median(times)}
    return out


def _run_round(executor: Executor, bench: Workbench, store: ShardStore, shards: list[Shard], desc: str,
               progress: bool) -> list[ShardResult]:
    """Stored shards, then the rest on ``executor``; results in plan order."""
    results = {shard: store.get(shard) for shard in shards}
    todo = [shard for shard, result in results.items() if result is None]
    total = sum(map(len, shards))
    with tqdm(total=total, initial=total - sum(map(len, todo)), desc=desc, unit="img", disable=not progress) as bar:
        for shard, result in executor.run(bench, todo):
            if results[shard] is not None:
                continue  # a worker that died mid-group: its retry yields the group's finished shards again
            store.put(shard, result)
            results[shard] = result
            finished = sum(r is not None for r in results.values())
            bar.set_postfix_str(f"{finished}/{len(shards)} shards, last: {shard.stage} {shard.method}")
            bar.update(len(shard))
    return [results[shard] for shard in shards]


def environment() -> dict[str, str]:
    """Versions and hardware the numbers were measured with."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
