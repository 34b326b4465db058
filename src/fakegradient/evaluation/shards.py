"""Evaluation work cut into shards — (model, method, slice of images) — with a resumable store.

The same ``attack_batch`` core computes a shard's per-image records in-process and on Ray
workers, so a single-process run and a distributed run give the same numbers.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_bytes_atomic, write_with
from ..attacks.base import norms
from ..attacks.deepfool import DeepFool
from ..data import Sample
from ..errors import FakeGradientError
from ..key import Key
from .records import ImageRecord


@dataclass(frozen=True)
class Shard:
    model: str  # name[:weights]
    method: str
    start: int  # image indices [start, stop)
    stop: int

    @property
    def id(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.model)}__{self.method}__{self.start:07d}-{self.stop:07d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan(model: str, methods: list[str], n_images: int, shard_size: int) -> list[Shard]:
    return [Shard(model, method, start, min(start + shard_size, n_images))
            for method in methods for start in range(0, n_images, shard_size)]


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
    """Finished shards as files (``<id>.json`` + ``<id>.npy`` for heatmap perturbations), written
    atomically as they finish. ``resume=False`` starts from an empty folder."""

    def __init__(self, folder: Path | None, resume: bool = False):
        self.folder = folder
        if folder is not None:
            try:
                if folder.exists() and not resume:
                    shutil.rmtree(folder)
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FakeGradientError(f"cannot use {folder} for shard results: {exc.strerror or exc}") from None

    def get(self, shard: Shard) -> tuple[list[ImageRecord], torch.Tensor | None] | None:
        if self.folder is None or not (self.folder / f"{shard.id}.json").is_file():
            return None
        try:
            payload = json.loads((self.folder / f"{shard.id}.json").read_text())
            records = [ImageRecord(**r) for r in payload["records"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # a damaged shard file is recomputed
        if len(records) != len(shard):
            return None
        pert_file = self.folder / f"{shard.id}.npy"
        return records, torch.from_numpy(np.load(pert_file)) if pert_file.is_file() else None

    def put(self, shard: Shard, records: list[ImageRecord], perturbation: torch.Tensor | None) -> None:
        if self.folder is None:
            return
        if perturbation is not None:  # before the json: a shard counts as done once its json exists
            write_with(self.folder / f"{shard.id}.npy", lambda tmp: _save_npy(tmp, perturbation.numpy()))
        payload = {"shard": asdict(shard), "records": [asdict(r) for r in records]}
        write_bytes_atomic(self.folder / f"{shard.id}.json", json.dumps(payload).encode())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
