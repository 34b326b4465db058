"""``evaluate``: Table 1/2 and Figures 6-8 for models × methods on a set of labelled images."""

from __future__ import annotations

import platform
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import Sample, foolbox_imagenet, image_folder, load_batch
from ..errors import FakeGradientError
from ..models import EMBEDDED_SPEC
from .adaptive import AdaptiveResult, adaptive_budgets, collect_adaptive
from .overhead import inference_times, model_size
from .pipeline import Normalized, load_pipeline
from .records import ImageRecord
from .shards import Shard, ShardResult, ShardStore, Workbench, full_fp32, plan, run_shard, served_pipelines

if TYPE_CHECKING:
    from .ray_executor import RayExecutor

METHODS = ("original", "fake-gradient", "random-weight", "fake-gradient-hardened")
EMBEDDED_DATA = "foolbox-imagenet"


@dataclass
class EvaluationConfig:
    models: list[str] = field(default_factory=lambda: [EMBEDDED_SPEC])  # name[:weights]
    methods: list[str] = field(default_factory=lambda: list(METHODS[:3]))  # the paper's three
    data: str = EMBEDDED_DATA  # or an ImageFolder path
    limit: int | None = None
    seed: int | None = None  # evaluation keys and random rows; None = a seed drawn from the CSPRNG per run
    scale: float = 20.0
    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50
    clip: bool = False  # the reference DeepFool does not clip to [0, 1]
    batch_size: int = 4  # images per DeepFool batch and per shard; small is faster on CPU, use ~64+ on a GPU
    device: str = "cpu"
    heatmap_images: int = 3
    timing_repeats: int = 15
    adaptive: bool = False  # also run the adaptive attackers (evaluation/adaptive.py)
    blackbox_queries: int = 300
    blackbox_factor: float = 2.0  # black-box L2 budget = factor x the median DeepFool ‖r‖₂ on the original
    feature_steps: int = 20

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if not self.methods or not self.models:
            raise ValueError("give at least one model and one method")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.timing_repeats < 2:
            raise ValueError(f"timing_repeats must be >= 2 (a median and an IQR), got {self.timing_repeats}")


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


def load_samples(config: EvaluationConfig) -> list[Sample]:
    if config.data == EMBEDDED_DATA:
        samples = foolbox_imagenet()
        return samples[: config.limit] if config.limit else samples
    return image_folder(config.data, config.limit)


def evaluate(config: EvaluationConfig, progress: bool = True, store: ShardStore | None = None,
             executor: RayExecutor | None = None) -> EvaluationResult:
    """Load each model by name (skipping those whose weights are absent) and evaluate it.

    ``store`` keeps finished shards on disk (resume); ``executor`` runs shards on Ray, where the
    workers load model and images themselves and the driver loads only what it plots or times.
    """
    samples = load_samples(config)
    if store is not None:
        store.begin(config_dict(config))
    device = torch.device(config.device)
    evaluations, skipped = [], []
    for spec in config.models:
        try:
            pipeline, pixel = load_pipeline(spec, config.device)
        except FakeGradientError as exc:
            skipped.append({"model": spec, "reason": str(exc)})
            continue
        on_driver = samples if executor is None else samples[: max(1, config.heatmap_images)]
        images = load_batch([s.path for s in on_driver], pixel)
        evaluations.append(evaluate_model(spec, pipeline, images.to(device), samples, config, progress=progress,
                                          store=store, executor=executor))
    return EvaluationResult(config, evaluations, skipped, environment())


def evaluate_model(
    name: str,
    pipeline: Normalized,
    images: torch.Tensor,
    samples: list[Sample],
    config: EvaluationConfig,
    progress: bool = True,
    store: ShardStore | None = None,
    executor: RayExecutor | None = None,
) -> ModelEvaluation:
    """Evaluate one pixel-space pipeline (normalisation + classifier) on images (B, C, H, W) in [0, 1].

    Every protected variant is made from ``pipeline.model`` with :func:`protect`; the attack sees
    only the served (protected) pipeline, the device decrypts with the key. With an ``executor``
    ``images`` may hold only the first images (for heatmaps): the workers load the rest.
    """
    with full_fp32():
        return _evaluate_model(name, pipeline, images, samples, config, progress, store or ShardStore(None),
                               executor)


def _evaluate_model(name: str, pipeline: Normalized, images: torch.Tensor, samples: list[Sample],
                    config: EvaluationConfig, progress: bool, store: ShardStore,
                    executor: RayExecutor | None) -> ModelEvaluation:
    original = pipeline.eval()
    # evaluation keys: seeded so that every worker builds the same protected model (they are
    # experiment keys, never deployed); a run without --seed draws one from the CSPRNG, once per run
    seed = config.seed if config.seed is not None else store.seed(name, lambda: secrets.randbits(63))
    bench = Workbench(config, original, served_pipelines(original, config, seed, images[:1]), samples, images)
    protected = list(bench.protected)
    n = len(samples)

    def run(shards: list[Shard], desc: str) -> list[ShardResult]:
        """Stored shards, then the rest on the executor or here; results in plan order."""
        results = {shard: store.get(shard) for shard in shards}
        todo = [shard for shard, result in results.items() if result is None]
        with tqdm(total=sum(map(len, shards)), initial=sum(map(len, shards)) - sum(map(len, todo)), desc=desc,
                  unit="img", disable=not progress) as bar:
            done = (executor.run(config, samples, todo, seed) if executor
                    else ((shard, run_shard(bench, shard)) for shard in todo))
            for shard, result in done:
                store.put(shard, result)
                results[shard] = result
                finished = sum(r is not None for r in results.values())
                bar.set_postfix_str(f"{finished}/{len(shards)} shards, last: {shard.stage} {shard.method}")
                bar.update(len(shard))
        return [results[shard] for shard in shards]

    deepfool_shards = plan(name, config.methods, n, config.batch_size)
    adaptive_run = config.adaptive and bool(protected)
    transfer_shards = plan(name, ["original"], n, config.batch_size, "transfer") if adaptive_run else []
    first = run(deepfool_shards + transfer_shards, f"DeepFool {name}")
    results, transfer = first[: len(deepfool_shards)], first[len(deepfool_shards) :]
    # in plan order: no gaps, no repeats
    records = [ImageRecord(**r) for result in results for r in result.records]
    heatmaps = {}
    for method in config.methods:
        parts = [r.perturbation for s, r in zip(deepfool_shards, results) if s.method == method and
                 r.perturbation is not None]
        if parts:
            heatmaps[method] = torch.from_numpy(np.concatenate(parts))
    adaptive = None
    if transfer_shards:
        budgets = adaptive_budgets(records, transfer)
        adaptive_shards = plan(name, protected, n, config.batch_size, "adaptive", budgets)
        adaptive_results = run(adaptive_shards, f"adaptive {name}")
        adaptive = collect_adaptive(bench, records, transfer, list(zip(adaptive_shards, adaptive_results)),
                                    budgets)
    served_models = {"original": original.model} | {m: p.model for m, (p, _) in bench.served.items()}
    n_real = next((k.n_real for _, k in bench.protected.values()), 0)
    overhead = measure_overhead(served_models, images[:1], original, config.timing_repeats)
    return ModelEvaluation(name, n_real, records, overhead, heatmaps, images[: config.heatmap_images].cpu(),
                           adaptive, seed)


def measure_overhead(served: dict[str, nn.Module], x: torch.Tensor, pipeline: Normalized,
                     repeats: int) -> dict[str, Any]:
    """Figures 7/8 inputs: size and batch-1 inference time of the original and each protected model."""
    normalized = (x - pipeline.mean) / pipeline.std
    return {
        "size": {method: model_size(model) for method, model in served.items()},
        "time": inference_times(served, normalized, repeats=repeats),
        "input_shape": list(x.shape),
    }


def environment() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def config_dict(config: EvaluationConfig) -> dict[str, Any]:
    data = asdict(config)
    data["data"] = config.data if config.data == EMBEDDED_DATA else str(Path(config.data))
    return data
