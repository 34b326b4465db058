"""Evaluation work cut into shards — (model, method, slice of images, stage) — with a resumable store.

The same :func:`run_shard` computes a shard on the driver and on Ray workers, so a single-process
run and a distributed run give the same numbers. Stages: ``deepfool`` (Table 1/2), then, with
``--adaptive``, ``transfer`` and ``adaptive`` (evaluation/adaptive.py); an adaptive shard carries
the budgets that earlier shards determined.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_bytes_atomic, write_with
from ..attacks.base import norms
from ..attacks.deepfool import DeepFool
from ..data import Sample, load_batch
from ..errors import FakeGradientError
from ..key import Key
from .pipeline import Normalized, load_pipeline, protected_pipeline
from .records import ImageRecord

if TYPE_CHECKING:
    from .runner import EvaluationConfig

STAGES = ("deepfool", "transfer", "adaptive")
RESUMABLE_CHANGES = ("device", "timing_repeats", "adaptive")  # settings a resumed run may change


@dataclass(frozen=True)
class Shard:
    model: str  # name[:weights]
    method: str  # for "transfer": "original", the model the attacker uses
    start: int  # image indices [start, stop)
    stop: int
    stage: str = "deepfool"
    budgets: tuple[tuple[str, float], ...] = ()  # an adaptive shard's budgets, from earlier shards

    @property
    def id(self) -> str:
        model = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)
        stage = "" if self.stage == "deepfool" else f"{self.stage}-"
        return f"{model}__{stage}{self.method}__{self.start:07d}-{self.stop:07d}"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown shard stage {self.stage!r}; one of {', '.join(STAGES)}")

    def __len__(self) -> int:
        return self.stop - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        data = json.loads(text)
        return cls(**data | {"budgets": tuple((k, v) for k, v in data["budgets"])})


@dataclass
class ShardResult:
    """What a shard yields: its records as dicts (ImageRecord or AttackerRecord fields), the
    perturbations of heatmap images (k, C, H, W) if any, and stage-specific per-image values."""

    records: list[dict[str, Any]]
    perturbation: np.ndarray | None = None
    values: dict[str, list] = field(default_factory=dict)


def plan(model: str, methods: list[str], n_images: int, shard_size: int, stage: str = "deepfool",
         budgets: dict[str, dict[str, float]] | None = None) -> list[Shard]:
    """Shards of ``shard_size`` images for each method; ``budgets[method]`` goes into its shards."""
    return [Shard(model, method, start, min(start + shard_size, n_images), stage,
                  tuple(sorted((budgets or {}).get(method, {}).items())))
            for method in methods for start in range(0, n_images, shard_size)]


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


def deepfool(config: EvaluationConfig) -> DeepFool:
    return DeepFool(config.candidates, config.overshoot, config.max_iter, (0.0, 1.0) if config.clip else None)


def served_pipelines(original: Normalized, config: EvaluationConfig, seed: int,
                     probe: torch.Tensor) -> dict[str, tuple[Normalized, Key | None]]:
    """method → (served pipeline, key), the original served as is. ``probe`` (1, C, H, W) is image 0."""
    return {method: (original, None) if method == "original" else
            protected_pipeline(original, method, scale=config.scale, seed=seed, probe=probe)
            for method in config.methods}


@dataclass
class Workbench:
    """What the shards of one model are computed from. The driver hands it the images it loaded
    (all of them without Ray); a Ray worker builds it with :meth:`load` and reads each shard's
    images from the data path."""

    config: EvaluationConfig
    original: Normalized
    served: dict[str, tuple[Normalized, Key | None]]
    samples: list[Sample]
    images: torch.Tensor | None = None  # (B, C, H, W) in [0, 1], all samples
    pixel: Callable | None = None  # the pixel preprocessing, when images is None
    memo: dict[Any, Any] = field(default_factory=dict)  # per-model things shards share

    @classmethod
    def load(cls, config: EvaluationConfig, spec: str, seed: int) -> Workbench:
        from .runner import load_samples

        original, pixel = load_pipeline(spec, config.device)
        samples = load_samples(config)
        probe = load_batch([samples[0].path], pixel).to(config.device)  # the driver traces on image 0 too
        with full_fp32():
            served = served_pipelines(original, config, seed, probe)
        return cls(config, original, served, samples, None, pixel)

    def batch(self, shard: Shard) -> torch.Tensor:
        if self.images is not None:
            return self.images[shard.start : shard.stop]
        paths = [s.path for s in self.samples[shard.start : shard.stop]]
        return load_batch(paths, self.pixel).to(self.config.device)

    def first_image(self) -> torch.Tensor:
        """(1, C, H, W): the image heads are traced on."""
        return self.batch(Shard("", "", 0, 1))

    @property
    def protected(self) -> dict[str, tuple[Normalized, Key]]:
        return {m: (p, k) for m, (p, k) in self.served.items() if k is not None}


def run_shard(bench: Workbench, shard: Shard, images: torch.Tensor | None = None) -> ShardResult:
    """Compute one shard (driver or worker); ``images`` (b, C, H, W) if already loaded."""
    from .adaptive import adaptive_shard, transfer_shard

    images = bench.batch(shard) if images is None else images
    samples = bench.samples[shard.start : shard.stop]
    with full_fp32():
        if shard.stage == "transfer":
            return transfer_shard(bench, shard, images, samples)
        if shard.stage == "adaptive":
            return adaptive_shard(bench, shard, images, samples)
        pipeline, key = bench.served[shard.method]
        records, perturbation = attack_batch(shard, bench.original, pipeline, key, images, samples,
                                             deepfool(bench.config))
    keep = max(0, bench.config.heatmap_images - shard.start)
    return ShardResult([asdict(r) for r in records], perturbation[:keep].numpy() if keep else None)


def attack_batch(shard: Shard, original: nn.Module, served: nn.Module, key: Key | None, images: torch.Tensor,
                 samples: list[Sample], attack: DeepFool) -> tuple[list[ImageRecord], torch.Tensor]:
    """DeepFool on the served pipeline for one shard: images (b, C, H, W) → records and perturbations."""
    with torch.no_grad():
        original_top1 = original(images).argmax(1)
        clean = served(images)
    result = attack(served, images)
    with torch.no_grad():
        adversarial = served(result.adversarial)
    changed = adversarial.argmax(1) != clean.argmax(1)  # judged by the same forward as the metrics
    plain = clean if key is None else key.decrypt_all(clean)
    n_real = plain.shape[1] if key is None else key.n_real
    real_adv = adversarial if key is None else key.decrypt(adversarial)
    fake = np.zeros(len(images), bool) if key is None else key.is_fake(clean.argmax(1).cpu().numpy())
    r = result.perturbation(images)
    sizes = norms(r, images)
    records = [
        ImageRecord(
            model=shard.model, method=shard.method, image=samples[i].path.name, label=samples[i].label,
            original_top1=int(original_top1[i]), served_top1=int(clean[i].argmax()), served_top1_fake=bool(fake[i]),
            plain_top1=int(plain[i].argmax()), decrypted_top1=int(plain[i, :n_real].argmax()),
            adversarial_top1=int(real_adv[i].argmax()), attack_changed_served=bool(changed[i]),
            rho=float(sizes["rho"][i]), l2=float(sizes["l2"][i]), linf=float(sizes["linf"][i]),
            iterations=int(result.iterations[i]),
        )
        for i in range(len(images))
    ]
    return records, r.cpu()


class ShardStore:
    """Finished shards as files (``<id>.json``: the shard and its records and values, ``<id>.npy``:
    heatmap perturbations), written atomically as they finish, and ``run.json``: the run's settings
    and evaluation seeds, so that a resumed run uses the same ones. ``resume=False`` starts afresh."""

    def __init__(self, folder: Path | None, resume: bool = False):
        self.folder = folder
        if folder is not None:
            try:
                if folder.exists() and not resume:
                    shutil.rmtree(folder)
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FakeGradientError(f"cannot use {folder} for shard results: {exc.strerror or exc}") from None

    def begin(self, settings: dict[str, Any]) -> None:
        """A fresh run records its settings; a resumed run must have the same ones."""
        if self.folder is None:
            return
        kept = {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in RESUMABLE_CHANGES}
        run = self._run()
        if run is None:
            self._write_run({"settings": kept, "seeds": {}})
        elif run["settings"] != kept:
            stored = run["settings"]
            changed = sorted(k for k in kept.keys() | stored.keys() if kept.get(k) != stored.get(k))
            raise FakeGradientError(f"--resume: the unfinished run in {self.folder.parent} used other "
                                    f"settings ({', '.join(changed)}); rerun with the same ones, or without "
                                    "--resume")

    def seed(self, model: str, draw: Callable[[], int]) -> int:
        """The evaluation seed of ``model`` in this run: the stored one when resuming, else ``draw()``."""
        run = self._run()
        if run is None:
            return draw()
        if model not in run["seeds"]:
            run["seeds"][model] = draw()
            self._write_run(run)
        return int(run["seeds"][model])

    def _run(self) -> dict[str, Any] | None:
        if self.folder is None or not (self.folder / "run.json").is_file():
            return None
        try:
            return json.loads((self.folder / "run.json").read_text())
        except (json.JSONDecodeError, OSError) as exc:
            raise FakeGradientError(f"--resume: {self.folder / 'run.json'} is damaged ({exc}); "
                                    "rerun without --resume") from None

    def _write_run(self, run: dict[str, Any]) -> None:
        write_bytes_atomic(self.folder / "run.json", json.dumps(run).encode())

    def get(self, shard: Shard) -> ShardResult | None:
        """The stored result, or None when absent, damaged, or made for other budgets."""
        if self.folder is None or not (self.folder / f"{shard.id}.json").is_file():
            return None
        try:
            payload = json.loads((self.folder / f"{shard.id}.json").read_text())
            if Shard.from_json(json.dumps(payload["shard"])) != shard:
                return None
            result = ShardResult(payload["records"], None, payload["values"])
            pert_file = self.folder / f"{shard.id}.npy"
            if pert_file.is_file():
                result.perturbation = np.load(pert_file)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError):
            return None  # a damaged shard file is recomputed
        return result

    def put(self, shard: Shard, result: ShardResult) -> None:
        if self.folder is None:
            return
        if result.perturbation is not None:  # before the json: a shard counts as done once its json exists
            write_with(self.folder / f"{shard.id}.npy", lambda tmp: _save_npy(tmp, result.perturbation))
        payload = {"shard": asdict(shard), "records": result.records, "values": result.values}
        write_bytes_atomic(self.folder / f"{shard.id}.json", json.dumps(payload).encode())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
