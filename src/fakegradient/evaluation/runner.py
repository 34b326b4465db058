"""``evaluate``: Table 1/2 and Figures 6-8 for models × methods on a set of labelled images."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import models as model_zoo
from ..attacks.base import norms
from ..attacks.deepfool import DeepFool
from ..data import Sample, foolbox_imagenet, image_folder, load_batch
from ..errors import FakeGradientError
from ..key import Key
from ..protection import protect
from .adaptive import AdaptiveResult, run_adaptive
from .overhead import inference_times, model_size
from .pipeline import Normalized, pixel_preprocessing
from .records import ImageRecord

METHODS = ("original", "fake-gradient", "random-weight", "fake-gradient-hardened")
EMBEDDED_DATA = "foolbox-imagenet"


@dataclass
class EvaluationConfig:
    models: list[str] = field(default_factory=lambda: ["mobilenet_v2:IMAGENET1K_V1"])  # name[:weights]
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    data: str = EMBEDDED_DATA  # or an ImageFolder path
    limit: int | None = None
    seed: int | None = None  # keys and random rows; None = CSPRNG (secure, not reproducible)
    scale: float = 20.0
    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 50
    clip: bool = False  # the reference DeepFool does not clip to [0, 1]
    batch_size: int = 20
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


def evaluate(config: EvaluationConfig, progress: bool = True) -> EvaluationResult:
    """Load each model by name (skipping those whose weights are absent) and evaluate it."""
    samples = load_samples(config)
    device = torch.device(config.device)
    evaluations, skipped = [], []
    for spec in config.models:
        name, _, weights_name = spec.partition(":")
        try:
            weights = model_zoo.get_weights(name, weights_name or "DEFAULT")
            model = model_zoo.load(name, weights=weights)
        except FakeGradientError as exc:
            skipped.append({"model": spec, "reason": str(exc)})
            continue
        pixel, mean, std = pixel_preprocessing(weights)
        images = load_batch([s.path for s in samples], pixel)
        evaluations.append(
            evaluate_model(spec, Normalized(model, mean, std).to(device).eval(), images.to(device),
                           samples, config, progress=progress)
        )
    return EvaluationResult(config, evaluations, skipped, environment())


def evaluate_model(
    name: str,
    pipeline: Normalized,
    images: torch.Tensor,
    samples: list[Sample],
    config: EvaluationConfig,
    progress: bool = True,
) -> ModelEvaluation:
    """Evaluate one pixel-space pipeline (normalisation + classifier) on images (B, C, H, W) in [0, 1].

    Every protected variant is made from ``pipeline.model`` with :func:`protect`; the attack sees
    only the served (protected) pipeline, the device decrypts with the key.
    """
    with full_fp32():
        return _evaluate_model(name, pipeline, images, samples, config, progress)


def _evaluate_model(name: str, pipeline: Normalized, images: torch.Tensor, samples: list[Sample],
                    config: EvaluationConfig, progress: bool) -> ModelEvaluation:
    attack = DeepFool(config.candidates, config.overshoot, config.max_iter, (0.0, 1.0) if config.clip else None)
    original = pipeline.eval()
    with torch.no_grad():
        original_top1 = torch.cat([original(b).argmax(1) for b in images.split(config.batch_size)])
    records: list[ImageRecord] = []
    heatmaps: dict[str, torch.Tensor] = {}
    served_models: dict[str, nn.Module] = {"original": original.model}
    protected_pipelines: dict[str, tuple[Normalized, Key]] = {}
    n_real = 0
    bar = tqdm(total=len(images) * len(config.methods), desc=f"DeepFool {name}", unit="img", disable=not progress)
    for method in config.methods:
        bar.set_postfix_str(method)
        if method == "original":
            served, key = original, None
        else:
            protected, key = protect(original.model, method=method, scale=config.scale, seed=config.seed,
                                     example_input=((images[:1] - original.mean) / original.std))
            served = Normalized(protected, original.mean.flatten().tolist(), original.std.flatten().tolist())
            served = served.to(images.device).eval()
            served_models[method] = protected
            protected_pipelines[method] = (served, key)
        perturbations = []
        batches = list(zip(images.split(config.batch_size), range(0, len(images), config.batch_size)))
        for xb, start in batches:
            with torch.no_grad():
                clean = served(xb)
            result = attack(served, xb)
            with torch.no_grad():
                adversarial = served(result.adversarial)
            changed = adversarial.argmax(1) != clean.argmax(1)  # judged by the same forward as the metrics
            plain = clean if key is None else key.decrypt_all(clean)
            n_real = plain.shape[1] if key is None else key.n_real
            real_adv = adversarial if key is None else key.decrypt(adversarial)
            fake = torch.zeros(len(xb), dtype=torch.bool) if key is None else \
                torch.as_tensor(key.is_fake(clean.argmax(1).cpu().numpy()))
            r = result.perturbation(xb)
            sizes = norms(r, xb)
            perturbations.append(r.cpu())
            for i in range(len(xb)):
                sample = samples[start + i]
                records.append(ImageRecord(
                    model=name, method=method, image=sample.path.name, label=sample.label,
                    original_top1=int(original_top1[start + i]),
                    served_top1=int(clean[i].argmax()), served_top1_fake=bool(fake[i]),
                    plain_top1=int(plain[i].argmax()), decrypted_top1=int(plain[i, :n_real].argmax()),
                    adversarial_top1=int(real_adv[i].argmax()),
                    attack_changed_served=bool(changed[i]),
                    rho=float(sizes["rho"][i]), l2=float(sizes["l2"][i]), linf=float(sizes["linf"][i]),
                    iterations=int(result.iterations[i]),
                ))
            bar.update(len(xb))
        heatmaps[method] = torch.cat(perturbations)[: config.heatmap_images]
    bar.close()
    adaptive = None
    if config.adaptive and protected_pipelines:
        naive = {m: [(r.defense_success, r.rho, r.l2) for r in records if r.method == m] for m in protected_pipelines}
        adaptive = run_adaptive(name, original, protected_pipelines, images, [s.path.name for s in samples],
                                naive, original_top1, config, progress)
    overhead = measure_overhead(served_models, images[:1], original, config.timing_repeats)
    return ModelEvaluation(name, n_real, records, overhead, heatmaps, images[: config.heatmap_images].cpu(),
                           adaptive)


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
