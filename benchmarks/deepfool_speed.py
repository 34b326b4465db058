"""Our batched DeepFool vs foolbox's L2DeepFoolAttack (and ART's DeepFool) in one run.

    python benchmarks/deepfool_speed.py [--model mobilenet_v2:IMAGENET1K_V1] [--images 8] [--device cpu] [--art-images 2]

Same model, same images, same settings (fakegradient.defaults: top-10 candidates, overshoot 0.02,
50 steps; clipping to [0, 1] as foolbox does). Prints images/s of each, the ratio, the agreement on success and the
median-ρ difference, and our DeepFool's fraction of its roofline: per iteration, DeepFool cannot do less
than one gradient-enabled forward pass and k−1 input-gradient backward passes over the images still
active; that unavoidable work, timed on the same model, images and device and summed over the
iterations the attack ran, divided by the attack's time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fakegradient import defaults
from fakegradient.attacks.base import norms
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.data import foolbox_imagenet, load_batch
from fakegradient.defaults import EMBEDDED_SPEC
from fakegradient.evaluation.pipeline import load_pipeline


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
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the photos to make a larger batch")
    parser.add_argument("--art-images", type=int, default=2,
                        help="ART's DeepFool is slow (a backward per class and sample): time it on this many images, 0 = skip")
    args = parser.parse_args()

    import foolbox as fb

    model, pixel = load_pipeline(args.model, args.device)
    samples = foolbox_imagenet()[: args.images]
    x = load_batch([s.path for s in samples], pixel).repeat(args.repeat, 1, 1, 1).to(args.device)
    with torch.no_grad():
        labels = model(x).argmax(1)
    n = len(x)
    print(f"{args.model} on {n} ImageNet photos, device {args.device}, torch threads {torch.get_num_threads()}")

    DeepFool(max_iter=1)(model, x[:2])  # warm-up
    print(f"{'attack':<26} {'images':>6} {'images/s':>9} {'success':>8} {'median rho':>11}", flush=True)

    def show(label, count, seconds, success, rho):
        print(f"{label:<26} {count:>6} {count / seconds:>9.3f} {success.float().mean().item():>8.1%} "
              f"{rho.median().item():>11.6f}", flush=True)
        return seconds, success, rho

    attack_ours = DeepFool(clip=(0.0, 1.0))
    ours, t_ours = timed(lambda: attack_ours(model, x))
    rows = [show("fakegradient DeepFool", n, t_ours, ours.success, norms(ours.perturbation(x), x)["rho"])]
    limit = roofline_seconds(model, x, ours.iterations, min(attack_ours.candidates, labels_width(model, x)))
    print(f"roofline (unavoidable forward + k-1 backward per iteration): {limit:.2f} s of {t_ours:.2f} s "
          f"= {limit / t_ours:.0%} of the attack's time", flush=True)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=args.device)
    attack = fb.attacks.L2DeepFoolAttack(steps=defaults.MAX_ITER, candidates=defaults.CANDIDATES,
                                         overshoot=defaults.OVERSHOOT)
    (_, fb_adv, fb_success), t_fb = timed(lambda: attack(fmodel, x, labels, epsilons=None))
    rows.append(show("foolbox L2DeepFoolAttack", n, t_fb, fb_success, norms(fb_adv - x, x)["rho"]))
    if args.art_images:
        k = min(args.art_images, n)
        try:
            show("ART DeepFool", k, *art_row(model, x[:k], labels[:k], args.device))
        except ImportError:
            print("ART DeepFool: adversarial-robustness-toolbox is not installed, skipped")
    ratio = t_fb / t_ours
    agreement = (ours.success.cpu() == fb_success.cpu()).float().mean().item()
    both = (ours.success & fb_success).cpu()
    d_rho = (rows[0][2].cpu()[both].median() / rows[1][2].cpu()[both].median() - 1).item()
    print(f"speed ratio ours / foolbox: {ratio:.2f}x   agreement on success: {agreement:.1%}   "
          f"median-rho difference: {d_rho:+.2%}")


def labels_width(model, x) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[1]


def roofline_seconds(model, x, iterations: torch.Tensor, k: int, repeats: int = 3) -> float:
    """The unavoidable work of the iterations DeepFool ran: for each iteration i, one gradient-enabled
    forward over the a_i images still active and k−1 backward passes to the input; each distinct a_i is
    timed (median of ``repeats``) and counted as often as it occurred."""
    active = [int((iterations > i).sum()) for i in range(int(iterations.max()))]

    def one(a: int) -> float:
        xa = x[:a].detach().clone().requires_grad_(True)

        def work():
            out = model(xa)[:, :k]
            diffs = out[:, 1:] - out[:, :1]
            for j in range(k - 1):
                torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=j < k - 2)

        work()  # warm-up
        return statistics.median(timed(work)[1] for _ in range(repeats))

    per_size = {a: one(a) for a in set(active) if a > 0}
    return sum(per_size[a] for a in active if a > 0)


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
