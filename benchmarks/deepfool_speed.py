"""Our batched DeepFool vs foolbox's L2DeepFoolAttack (and ART's DeepFool) in one run.

    python benchmarks/deepfool_speed.py [--model mobilenet_v2:IMAGENET1K_V1] [--images 8] [--device cpu]
                                        [--repeats 3] [--art-images 2] [--repeat 1] [--random-weights]

Same model, same images, same settings (fakegradient.defaults: top-10 candidates, overshoot 0.02,
50 steps; clipping to [0, 1] as foolbox does). Prints images/s of each, the ratios ours/foolbox and
ours/ART, the agreement on success and the median-ρ difference, and our DeepFool's **fraction of its
roofline**: per iteration, DeepFool cannot do less than one gradient-enabled forward pass and k−1
input-gradient backward passes over the images still active. That unavoidable work is timed on the
same model, device and batching, on the very images active in each iteration the attack ran
(``iterations > i``), summed over those iterations; fraction = unavoidable time / attack time.
Both are warmed up and timed ``--repeats`` times, interleaved (attack, then its roofline), so each
repeat gives one fraction under the same load; the median and the range are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fakegradient import defaults, models
from fakegradient.attacks.base import norms
from fakegradient.attacks.deepfool import DeepFool, _rowwise_grads
from fakegradient.data import foolbox_imagenet, load_batch
from fakegradient.defaults import EMBEDDED_SPEC
from fakegradient.evaluation.pipeline import Normalized, load_pipeline, pixel_preprocessing, spec_weights


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_SPEC)
    parser.add_argument("--random-weights", action="store_true",
                        help="the architecture with seeded random weights (speed only; no checkpoint needed, e.g. "
                             "resnet50 offline); preprocessing from its weights' metadata")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the photos to make a larger batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of our attack and of its roofline")
    parser.add_argument("--art-images", type=int, default=2,
                        help="ART's DeepFool is slow (a backward per class and sample): time it on this many images, 0 = skip")
    args = parser.parse_args()

    import foolbox as fb

    if args.random_weights:  # speed only: the same work per iteration, other decisions than a trained model
        torch.manual_seed(0)
        pixel, mean, std = pixel_preprocessing(spec_weights(args.model))
        model = Normalized(models.load(args.model.partition(":")[0], weights=None), mean, std)
        model = model.to(args.device).eval()
    else:
        model, pixel = load_pipeline(args.model, args.device)
    samples = foolbox_imagenet()[: args.images]
    x = load_batch([s.path for s in samples], pixel).repeat(args.repeat, 1, 1, 1).to(args.device)
    with torch.no_grad():
        labels = model(x).argmax(1)
    n = len(x)
    print(f"{args.model}{' (random weights)' if args.random_weights else ''} on {n} ImageNet photos, device {args.device}, torch threads {torch.get_num_threads()}")

    attack_ours = DeepFool(clip=(0.0, 1.0))
    ours = attack_ours(model, x)  # warm-up, also every batch size the timed runs will see
    k = min(attack_ours.candidates, labels_width(model, x))
    roofline_seconds(model, x, ours.iterations, k)  # warm-up
    times, limits = [], []
    for _ in range(args.repeats):  # interleaved: each fraction under one load
        ours, seconds = timed(lambda: attack_ours(model, x))
        times.append(seconds)
        limits.append(roofline_seconds(model, x, ours.iterations, k))
    fractions = [lim / t for lim, t in zip(limits, times)]
    t_ours = statistics.median(times)
    print(f"{'attack':<26} {'images':>6} {'images/s':>9} {'success':>8} {'median rho':>11}", flush=True)

    def show(label, count, seconds, success, rho):
        print(f"{label:<26} {count:>6} {count / seconds:>9.3f} {success.float().mean().item():>8.1%} "
              f"{rho.median().item():>11.6f}", flush=True)
        return seconds, success, rho

    rows = [show("fakegradient DeepFool", n, t_ours, ours.success, norms(ours.perturbation(x), x)["rho"])]
    print(f"  attack time, {args.repeats} runs: median {t_ours:.2f} s (range {min(times):.2f}-{max(times):.2f} s); "
          f"iterations run: {int(ours.iterations.max())}, image-iterations: {int(ours.iterations.sum())}")
    print(f"roofline (unavoidable forward + {k - 1} backward passes per iteration over the active images): "
          f"median {statistics.median(limits):.2f} s (range {min(limits):.2f}-{max(limits):.2f} s)")
    print(f"fraction of roofline = unavoidable time / attack time: median {statistics.median(fractions):.1%} "
          f"(range {min(fractions):.1%}-{max(fractions):.1%}, {args.repeats} interleaved runs)", flush=True)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=args.device)
    attack = fb.attacks.L2DeepFoolAttack(steps=defaults.MAX_ITER, candidates=defaults.CANDIDATES,
                                         overshoot=defaults.OVERSHOOT)
    (_, fb_adv, fb_success), t_fb = timed(lambda: attack(fmodel, x, labels, epsilons=None))
    rows.append(show("foolbox L2DeepFoolAttack", n, t_fb, fb_success, norms(fb_adv - x, x)["rho"]))
    art_rate = None
    if args.art_images:
        n_art = min(args.art_images, n)
        try:
            t_art = show("ART DeepFool", n_art, *art_row(model, x[:n_art], labels[:n_art], args.device))[0]
            art_rate = n_art / t_art
        except ImportError:
            print("ART DeepFool: adversarial-robustness-toolbox is not installed, skipped")
    ratio = t_fb / t_ours
    agreement = (ours.success.cpu() == fb_success.cpu()).float().mean().item()
    both = (ours.success & fb_success).cpu()
    d_rho = (rows[0][2].cpu()[both].median() / rows[1][2].cpu()[both].median() - 1).item()
    print(f"speed ratio ours / foolbox: {ratio:.2f}x   agreement on success: {agreement:.1%}   "
          f"median-rho difference: {d_rho:+.2%}")
    if art_rate is not None:
        print(f"speed ratio ours / ART (images/s; ART on {n_art} of the images): {n / t_ours / art_rate:.2f}x")


def labels_width(model, x) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[1]


def roofline_seconds(model, x, iterations: torch.Tensor, k: int) -> float:
    """The unavoidable work of the iterations DeepFool ran: for each iteration i, one gradient-enabled
    forward over the images still active (``iterations > i``, x (B, C, H, W), iterations (B,)) and
    k−1 backward passes to the input (:func:`_rowwise_grads`), done the fastest way we know: the least
    time over memory layouts (contiguous, channels_last) and, on CUDA, batched and sequential passes.
    The cost depends on the batch size, not on pixel values, so each distinct size is timed once, on the
    images of its first iteration, and counted as often as it occurred."""
    masks = [iterations > i for i in range(int(iterations.max()))]
    ways = [(layout, batched) for layout in (torch.contiguous_format, torch.channels_last)
            for batched in ((True, False) if x.is_cuda else (False,))]

    def one(xs: torch.Tensor, layout: torch.memory_format, batched: bool) -> float:
        xs = xs.contiguous(memory_format=layout)

        def work():
            xa = xs.detach().requires_grad_(True)
            out = model(xa)[:, :k]
            _rowwise_grads(out[:, 1:] - out[:, :1], xa, batched=batched)

        return timed(work)[1]

    per_size: dict[int, float] = {}
    for mask in masks:
        size = int(mask.sum())
        if size not in per_size:
            per_size[size] = min(one(x[mask], *way) for way in ways)
    return sum(per_size[int(mask.sum())] for mask in masks)


def art_row(model, x, labels, device):
    import numpy as np
    from art.attacks.evasion import DeepFool as ArtDeepFool
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=n_classes, clip_values=(0.0, 1.0), device_type="gpu" if "cuda" in device else "cpu")
    attack = ArtDeepFool(classifier, max_iter=defaults.MAX_ITER, epsilon=defaults.OVERSHOOT,
                         nb_grads=defaults.CANDIDATES, batch_size=len(x), verbose=False)
    adv, seconds = timed(lambda: attack.generate(x.cpu().numpy()))
    adv = torch.from_numpy(np.asarray(adv)).to(x.device)
    with torch.no_grad():
        success = model(adv).argmax(1) != labels
    return seconds, success, norms(adv - x, x)["rho"]


if __name__ == "__main__":
    main()
