"""Why MNIST differs (mechanism): does DeepFool aimed at the fake outputs push the image the same way as
DeepFool on the unprotected model? Per image, the cosine between the two perturbations and their norm ratio.

Models: the real ImageNet MobileNetV2 on the 23 photos (`--data photos`), with its full head and with each
photo's head restricted to 10 classes (its top-1 + 9 drawn by ``numpy.random.default_rng([seed, 10, photo
index])``, or its 10 highest-ranked classes, as :mod:`studies.mnist_classes`), and an MNIST ResNet-18
retrained on CPU with each of ``--mnist-recipes`` at 32×32 (as :mod:`studies.mnist_recipes`, same seed) on the
first ``--eval`` held-out digits. Protection and attack are the evaluation's (``protected_pipeline``, the
configured DeepFool: top-10 candidates, overshoot 0.02, ≤ 50 iterations, no clipping, pixel space).

    python -m studies.mnist_direction --seed 0 --out reports/mnist/direction
    python -m studies.mnist_direction --from-stored --out reports/mnist/direction
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fakegradient.atomic import write_bytes_atomic
from fakegradient.data import load_batch
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.config import PHOTOS_DATA, EvaluationConfig, load_samples
from fakegradient.evaluation.pipeline import Normalized, load_pipeline, protected_pipeline
from fakegradient.evaluation.runner import environment
from fakegradient.evaluation.workbench import deepfool

from . import mnist
from .heads import head_classes, restrict_head
from .kit import command_line, markdown_table, parse_bool, rate_text, read_csv, run_study, study_parser, write_csv

MODULE = "studies.mnist_direction"
COLUMNS = {"model": str, "image": str, "cos": float, "l2_ratio": float, "defense_success": parse_bool}
SPEC = "mobilenet_v2:IMAGENET1K_V1"


def directions(original: Normalized, images: torch.Tensor, names: list[str], seed: int, model: str) -> list[dict]:
    """Per image (B, C, H, W): cos(r_FG, r_original), ‖r_FG‖/‖r_original‖ and whether FG defended."""
    config = EvaluationConfig(seed=seed)
    attack = deepfool(config)
    served, key = protected_pipeline(original, "fake-gradient", scale=config.scale, seed=seed, probe=images[:1])
    rows = []
    for start in range(0, len(images), 50):
        x = images[start : start + 50]
        with torch.no_grad():
            clean = original(x).argmax(1)
        r_orig = (attack(original, x).adversarial - x).flatten(1)
        adversarial = attack(served, x).adversarial
        with torch.no_grad():
            defended = key.decrypt(served(adversarial)).argmax(1) == clean
        r_fg = (adversarial - x).flatten(1)
        cos = torch.nn.functional.cosine_similarity(r_fg, r_orig, dim=1)
        ratio = r_fg.norm(dim=1) / r_orig.norm(dim=1)
        rows += [{"model": model, "image": names[start + i], "cos": float(cos[i]), "l2_ratio": float(ratio[i]),
                  "defense_success": bool(defended[i])} for i in range(len(x))]
    return rows


def imagenet(seed: int, k: int | None, selection: str = "random") -> list[dict]:
    full, pixel = load_pipeline(SPEC, "cpu")
    samples = load_samples(EvaluationConfig(data=PHOTOS_DATA))
    images = load_batch([s.path for s in samples], pixel)
    names = [s.path.name for s in samples]
    if k is None:
        return directions(full, images, names, seed, "MobileNetV2 ImageNet, 1000 classes")
    with torch.no_grad():
        logits = full(images)
    rows = []
    for i in tqdm(range(len(samples)), desc=f"k={k}"):
        classes = head_classes(selection, k, logits[i], seed, i)
        head = restrict_head(full.model, classes, (images[i : i + 1] - full.mean) / full.std)
        pipeline = Normalized(head, full.mean.flatten().tolist(), full.std.flatten().tolist()).eval()
        which = "random" if selection == "random" else "highest-ranked"
        rows += directions(pipeline, images[i : i + 1], names[i : i + 1], seed,
                           f"MobileNetV2 ImageNet, {k} {which} classes")
    return rows


def mnist_resnet18(seed: int, n: int, recipe: str) -> list[dict]:
    x_all, y_all = mnist.load_mnist()
    train_idx, test_idx = mnist.split(len(x_all), seed)
    x_train, y_train = mnist.to_pixels(x_all[train_idx], 32), torch.from_numpy(y_all[train_idx])
    torch.manual_seed(seed)
    pipeline = Normalized(mnist.build("resnet18"), mnist.MEAN, mnist.STD)
    mnist.train(pipeline, x_train, y_train, mnist.recipe(recipe), "resnet18",
                generator=torch.Generator().manual_seed(seed))
    images = mnist.to_pixels(x_all[test_idx[:n]], 32)
    return directions(pipeline, images, [f"mnist_{int(i)}" for i in test_idx[:n]], seed,
                      f"ResNet-18 MNIST (recipe {recipe}, 32×32)")


def store(rows: list[dict], out: Path, command: str) -> None:
    """``per_image.csv`` (one row per image, :data:`COLUMNS`) and ``run.json`` (command, environment; last)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_image.csv", rows)
    write_bytes_atomic(out / "run.json", json.dumps({"command": command, "environment": environment()},
                                                    indent=2).encode())


def report(out: Path) -> Path:
    """``report.md`` from the stored ``per_image.csv`` and ``run.json``."""
    rows = read_csv(out / "per_image.csv", COLUMNS)
    try:
        run = json.loads((out / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise FakeGradientError(f"cannot read {out / 'run.json'}: {exc}") from None
    if not rows:
        raise FakeGradientError(f"{out / 'per_image.csv'} has no rows")
    lines = ["# Does DeepFool on the fake outputs push the image the way DeepFool on the original does?", "",
             "Per image: r_FG = DeepFool's perturbation on the Fake Gradient model (served outputs), r_orig = on the "
             "unprotected model; cos(r_FG, r_orig) (1: the same direction) and ‖r_FG‖/‖r_orig‖. Defense success as "
             "in Table 1 (decrypted real top-1 on the attacked image = clean top-1): k/n = %, [Wilson 95 %].", ""]
    table = []
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        cos = [r["cos"] for r in group]
        q1, _, q3 = statistics.quantiles(cos, n=4) if len(cos) > 1 else (cos[0], 0, cos[0])
        split = [[r["cos"] for r in group if r["defense_success"] == won] for won in (True, False)]
        table.append([model, len(group), rate_text(sum(r["defense_success"] for r in group), len(group)),
                      f"{statistics.median(cos):.2f} ({q1:.2f}–{q3:.2f})",
                      rate_text(sum(c > 0.9 for c in cos), len(cos)),
                      f"{statistics.median(r['l2_ratio'] for r in group):.2f}",
                      " / ".join(f"{statistics.median(s):.2f} (n={len(s)})" if s else "—" for s in split)])
    lines += markdown_table(["model", "images", "Fake Gradient: defense success", "median cos (IQR)", "cos > 0.9",
                             "median ‖r‖ ratio", "median cos, defended / lost"], table)
    env = run["environment"]
    lines += ["", f"Command: `{run['command']}`. Machine: {env['platform']}, torch {env['torch']}, "
                  f"{env['cpu_threads']} torch thread(s), a contended 2-core VM. Per image: `per_image.csv`.", ""]
    path = out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/mnist/direction"),
                          "rewrite report.md from --out's per_image.csv and run.json")
    parser.add_argument("--eval", type=int, default=500, help="held-out MNIST digits attacked")
    parser.add_argument("--mnist-recipes", default="old,strong", help="recipes the MNIST ResNet-18 is trained with")
    args = parser.parse_args(argv)

    def work() -> Path:
        if not args.from_stored:
            if not 1 <= args.eval <= mnist.HELD_OUT:
                raise FakeGradientError(f"--eval must be in 1..{mnist.HELD_OUT}")
            for recipe in args.mnist_recipes.split(","):
                mnist.recipe(recipe)  # unknown: a clear error before any work
            rows = (imagenet(args.seed, None) + imagenet(args.seed, 10, "random") + imagenet(args.seed, 10, "top")
                    + [row for recipe in args.mnist_recipes.split(",")
                       for row in mnist_resnet18(args.seed, args.eval, recipe)])
            store(rows, args.out, command_line(MODULE, argv))
        return report(args.out)

    return run_study(work)


if __name__ == "__main__":
    sys.exit(main())
