"""Which real rows a file-only attacker recovers from the served head alone, per scheme (leave one model out).

Each of MobileNetV2 and EfficientNet-Lite0/1/2 (pretrained, on this machine: `make install` puts the weights in
place) is protected with every scheme row under ``--keys`` keys (seeds ``1000 * seed + key``). Per protected
head, the attackers that read only the served head (W_en, b_en):

- ``key-recovery-file``: the matrix's cascade (equal biases, else sign patterns, else row norms);
- ``bias-equality`` / ``sign-pattern``: one pairing oracle alone (pairs rows, keeps the smaller of each pair;
  "—" where it does not pair every row); ``row-norm``: the N smallest rows;
- ``learned-rows``: the row classifier (:mod:`fakegradient.attacks.row_classifier`, gradient boosting on
  dimension-free per-row statistics) fitted on the heads of the OTHER models protected with the same scheme
  (all their keys), then the N rows it scores most likely real on the held-out model's head;
- chance: N rows drawn at random (expected N/2 of 2N, N/3 of 3N for decoys).

Recovered = real rows among the N named (k of N), pooled over models and keys with a 95 % Wilson interval (rows
of one head are not independent: the per-key range is given too). ``mixing`` serves N outputs that are all
mixtures: no served row is a class, nothing to recover.

    python -m studies.file_only --seed 0 --out reports/file_only
    python -m studies.file_only --from-stored --out reports/file_only
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.intervals import Rate
from fakegradient.machine import cpu_model

from .kit import command_line, markdown_table, rate_text, read_csv, run_study, study_parser, write_csv

MODULE = "studies.file_only"
MODELS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# (row name, scheme, fake bias)
SCHEMES: tuple[tuple[str, str, str], ...] = (
    ("fake-gradient", "fake-gradient", "paper"),
    ("fake-gradient-official", "fake-gradient", "official"),
    ("random-weight", "random-weight", "paper"),
    ("random-weight-official", "random-weight", "official"),
    ("fake-gradient-hardened", "fake-gradient-hardened", "paper"),
    ("scaled-copy", "scaled-copy", "paper"),
    ("random-decoy", "random-decoy", "paper"),
    ("decoys", "decoys", "paper"),
    ("mixing", "mixing", "paper"),
)
ATTACKERS = ("chance", "key-recovery-file", "bias-equality", "sign-pattern", "row-norm", "learned-rows")
BROKEN = 0.95  # the learned attacker "breaks" a scheme when its pooled interval's lower end is at least this


def _chance(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    return np.sort(rng.choice(len(mask), size=n, replace=False))


def _oracles(weight: np.ndarray, bias: np.ndarray, n: int, rng: np.random.Generator,
             mask: np.ndarray) -> dict[str, tuple[np.ndarray | None, float]]:
    """attacker → (positions it names or None where it does not apply, seconds) for the fixed oracles."""
    import torch

    from fakegradient.attacks.key_recovery import recover_real_rows, recover_with

    w, b = torch.from_numpy(weight), torch.from_numpy(bias)
    out: dict[str, tuple[np.ndarray | None, float]] = {"chance": (_chance(rng, mask, n), 0.0)}
    two_n = len(mask) == 2 * n
    found = recover_real_rows(w, b) if two_n else None
    out["key-recovery-file"] = (None, 0.0) if found is None else (found.real_positions, found.seconds)
    for oracle in ("bias-equality", "sign-pattern"):
        found = recover_with(w, b, oracle) if two_n else None
        out[oracle] = (None, 0.0) if found is None else (found.real_positions, found.seconds)
    begin = time.perf_counter()
    norms = np.linalg.norm(weight, axis=1)
    out["row-norm"] = (np.sort(np.argsort(norms, kind="stable")[:n]), time.perf_counter() - begin)
    return out


def run(args: Any) -> None:
    import torch

    from fakegradient.attacks.row_classifier import FEATURE_NAMES, fit_features, row_features
    from fakegradient.evaluation.learned_rows import protected_example, public_model

    torch.set_num_threads(1)
    started = time.time()
    publics = {}
    for name in MODELS:
        public = public_model(name)
        if public is None:
            raise FakeGradientError(f"the pretrained weights of {name} are not on this machine (make install)")
        publics[name] = public
    rows: list[dict] = []
    features: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, float]]] = {}  # (row, model) → heads
    for row_name, method, fake_bias in SCHEMES:
        for name, public in publics.items():
            begin = time.time()
            for key in range(args.keys):
                example = protected_example(public, method, 1000 * args.seed + key, fake_bias=fake_bias)
                if example is None:
                    continue
                weight, bias, mask = example
                start = time.perf_counter()
                block = row_features(weight, bias)
                features.setdefault((row_name, name), []).append((block, mask, time.perf_counter() - start))
                rng = np.random.default_rng([args.seed, key, MODELS.index(name), len(features)])
                for attacker, (named, seconds) in _oracles(weight, bias, int(mask.sum()), rng, mask).items():
                    rows.append(_row(name, row_name, key, attacker, named, mask, seconds))
            print(f"{row_name} {name}: {time.time() - begin:.0f} s", flush=True)
    importance: dict[str, list[tuple[str, float]]] = {}
    for row_name, _, _ in SCHEMES:
        names = [m for m in MODELS if (row_name, m) in features]
        if not names:  # no served row is a class
            rows += [_row(m, row_name, key, a, None, None, 0.0) for a in ATTACKERS for m in MODELS
                     for key in range(args.keys)]
            continue
        importance[row_name] = _single_feature_auc(
            [(f, y) for m in names for f, y, _ in features[row_name, m]], FEATURE_NAMES)
        for held_out in names:
            begin = time.perf_counter()
            train = [(f, y) for m in names if m != held_out for f, y, _ in features[row_name, m]]
            classifier = fit_features([f for f, _ in train], [y for _, y in train], seed=args.seed)
            training = time.perf_counter() - begin
            for key, (block, mask, featurise) in enumerate(features[row_name, held_out]):
                start = time.perf_counter()
                scores = classifier.estimator.predict_proba(block)[:, 1]
                named = np.sort(np.argsort(-scores, kind="stable")[: int(mask.sum())])
                rows.append(_row(held_out, row_name, key, "learned-rows", named, mask,
                                 featurise + time.perf_counter() - start) | {"training_seconds": round(training, 2)})
            print(f"{row_name} learned, held out {held_out}: trained in {training:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "per_key.csv", [{"training_seconds": ""} | r for r in rows])
    record = {"command": args.command, "seed": args.seed, "keys": args.keys, "models": list(MODELS),
              "key_seeds": "1000 * seed + key", "schemes": [list(s) for s in SCHEMES],
              "features": list(FEATURE_NAMES), "single_feature_auc": importance,
              "seconds": round(time.time() - started), "machine": args.machine}
    write_bytes_atomic(args.out / "run.json", (json.dumps(record, indent=1) + "\n").encode())


def _row(model: str, scheme: str, key: int, attacker: str, named: np.ndarray | None, mask: np.ndarray | None,
         seconds: float) -> dict:
    if named is None or mask is None:
        return {"model": model, "scheme": scheme, "key": key, "attacker": attacker, "k": "", "n": "",
                "rows": "" if mask is None else len(mask), "seconds": ""}
    return {"model": model, "scheme": scheme, "key": key, "attacker": attacker, "k": int(mask[named].sum()),
            "n": int(mask.sum()), "rows": len(mask), "seconds": round(seconds, 4)}


def _single_feature_auc(blocks: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...],
                        top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` features that alone best separate real from fake rows (pooled over models): max(AUC, 1 − AUC)."""
    from sklearn.metrics import roc_auc_score

    x = np.concatenate([f for f, _ in blocks])
    y = np.concatenate([m for _, m in blocks])
    aucs = []
    for j, name in enumerate(names):
        auc = roc_auc_score(y, np.nan_to_num(x[:, j]))
        aucs.append((name, round(float(max(auc, 1 - auc)), 3)))
    return sorted(aucs, key=lambda item: -item[1])[:top]


# -- the report ---------------------------------------------------------------------------------------------


def _int_or_none(text: str) -> int | None:
    return None if text == "" else int(text)


def summarise(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """scheme → attacker → pooled k, n, per-key fractions, keys fully recovered, per model k/n."""
    out: dict[str, dict[str, dict]] = {}
    for row in rows:
        cell = out.setdefault(row["scheme"], {}).setdefault(
            row["attacker"], {"k": 0, "n": 0, "fractions": [], "full": 0, "keys": 0, "models": {}, "applies": True})
        if row["k"] is None:
            cell["applies"] = False
            continue
        cell["k"] += row["k"]
        cell["n"] += row["n"]
        cell["keys"] += 1
        cell["full"] += row["k"] == row["n"]
        cell["fractions"].append(row["k"] / row["n"])
        per_model = cell["models"].setdefault(row["model"], [0, 0])
        per_model[0] += row["k"]
        per_model[1] += row["n"]
    for by_attacker in out.values():
        for cell in by_attacker.values():
            cell["applies"] = cell["applies"] and cell["n"] > 0
            if cell["n"]:
                rate = Rate(cell["k"], cell["n"])
                cell |= {"pct": rate.pct, "ci95_pct": list(rate.ci95_pct),
                         "per_key_range_pct": [100 * min(cell["fractions"]), 100 * max(cell["fractions"])]}
    return out


def verdict(scheme: str, cells: dict[str, dict]) -> str:
    learned = cells.get("learned-rows", {})
    if not learned.get("applies"):
        return "nothing to recover (no served row is a class)"
    chance = cells["chance"]
    best = max((a for a in ATTACKERS[1:] if cells.get(a, {}).get("applies")), key=lambda a: cells[a]["pct"])
    low = learned["ci95_pct"][0]
    if low >= 100 * BROKEN:
        return f"**broken from the file alone** (learned: {learned['full']}/{learned['keys']} keys all N rows)"
    if low > chance["ci95_pct"][1]:
        return f"**partly broken**: learned above chance (best attacker {best}: {cells[best]['pct']:.0f} %)"
    return f"at chance for every attacker tried (best {best}: {cells[best]['pct']:.0f} %)"


def report(out: Path) -> Path:
    """report.md, results.json and file_only.png from ``per_key.csv`` and ``run.json`` under ``out``."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise FakeGradientError(f"no finished run under {out}: {exc}") from None
    rows = read_csv(out / "per_key.csv", {"model": str, "scheme": str, "key": int, "attacker": str,
                                          "k": _int_or_none, "n": _int_or_none, "rows": _int_or_none,
                                          "seconds": lambda v: None if v == "" else float(v),
                                          "training_seconds": lambda v: None if v == "" else float(v)})
    summary = summarise(rows)
    schemes = [s for s, _, _ in record["schemes"] if s in summary]

    def cell(scheme: str, attacker: str) -> str:
        c = summary[scheme].get(attacker)
        if c is None or not c["applies"]:
            return "—"
        low, high = c["per_key_range_pct"]
        return f"{rate_text(c['k'], c['n'])} (keys {low:.0f}–{high:.0f} %)"

    table = [[s, *(cell(s, a) for a in ATTACKERS), verdict(s, summary[s])] for s in schemes]
    per_model = [[s, *(("{}/{}".format(*summary[s]["learned-rows"]["models"][m])
                        if m in summary[s].get("learned-rows", {}).get("models", {}) else "—")
                       for m in record["models"])] for s in schemes]
    training = [r["training_seconds"] for r in rows if r["training_seconds"] is not None]
    scoring = [r["seconds"] for r in rows if r["attacker"] == "learned-rows" and r["seconds"] is not None]
    auc = record.get("single_feature_auc", {})
    lines = [f"# File-only attackers at their strongest (leave one model out, {record['keys']} keys per model)", "",
             f"Command: `{record['command']}` ({record['machine']}, {record['seconds']} s in all). Models: "
             f"{', '.join(record['models'])} (pretrained); key seeds {record['key_seeds']} with seed "
             f"{record['seed']}.", "",
             "Real rows recovered: of the N rows an attacker names from the served head alone, how many are real "
             "(k of N pooled over models and keys, 95 % Wilson interval treating rows as independent, which they "
             "are not within one head: the range over keys is given too). `learned-rows` is fitted on the other "
             "models' protected heads (same scheme, all their keys) and never sees the held-out model, its "
             "head or its key. `bias-equality` / `sign-pattern`: the pairing oracle alone (— where it does not "
             "pair every row); `key-recovery-file`: the matrix's cascade of both, then row norms (both — for the 3N "
             "rows of `decoys`); `row-norm`: the N smallest rows. Chance: N random rows. A verdict \"broken\" "
             f"needs the learned attacker's interval to start at {100 * BROKEN:.0f} % or more.", "",
             *markdown_table(["scheme", *ATTACKERS, "verdict"], table), "",
             "Learned attacker per held-out model (real rows of the N named, all keys):", "",
             *markdown_table(["scheme", *record["models"]], per_model), "",
             f"Cost on this machine: fitting the classifier {min(training, default=0):.1f}–"
             f"{max(training, default=0):.1f} s per held-out model and scheme (features precomputed); naming the "
             "real rows of one served head (its features, then the scores) "
             f"{float(np.median(scoring)) if scoring else 0:.1f} s median.",
             "", "The single statistics that best separate real from fake rows (pooled over models and keys; "
             "max(AUC, 1 − AUC), 0.5 = none):", "",
             *markdown_table(["scheme", "top features (AUC)"],
                             [[s, ", ".join(f"{n} {v:.2f}" for n, v in auc[s])] for s in schemes if s in auc]), ""]
    write_bytes_atomic(out / "report.md", "\n".join(lines).encode())
    results = {"command": record["command"], "machine": record["machine"], "seconds": record["seconds"],
               "keys": record["keys"], "models": record["models"],
               "recovery": {s: {a: {k: v for k, v in c.items() if k != "fractions"} for a, c in summary[s].items()}
                            for s in schemes},
               "verdict": {s: verdict(s, summary[s]) for s in schemes}, "single_feature_auc": auc}
    write_bytes_atomic(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    _figure(out / "file_only.png", summary, schemes)
    return out / "report.md"


def _figure(path: Path, summary: dict, schemes: list[str]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attackers = ATTACKERS[1:]
    width = 0.8 / len(attackers)
    fig, ax = plt.subplots(figsize=(13, 4.8))
    for i, attacker in enumerate(attackers):
        xs, ys, lows, highs = [], [], [], []
        for j, scheme in enumerate(schemes):
            c = summary[scheme].get(attacker)
            if c is None or not c["applies"]:
                continue
            xs.append(j - 0.4 + (i + 0.5) * width)
            ys.append(c["pct"])
            lows.append(c["pct"] - c["ci95_pct"][0])
            highs.append(c["ci95_pct"][1] - c["pct"])
        ax.bar(xs, ys, width, yerr=[lows, highs], capsize=2, label=attacker)
    for j, scheme in enumerate(schemes):
        chance = summary[scheme].get("chance")
        if chance and chance["applies"]:
            ax.hlines(chance["pct"], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      label="chance" if j == 0 else None)
        else:
            ax.text(j, 45, "no served row\nis a class\n(mixtures)", ha="center", fontsize=8)
    ax.set_xticks(range(len(schemes)), schemes, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("real rows among the N named (%)")
    ax.set_ylim(0, 105)
    ax.set_title("File-only key recovery, leave one model out (pooled over models and keys, 95 % Wilson; "
                 "no bar: the oracle does not apply)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], MODULE, Path("reports/file_only"),
                          "rebuild report.md, results.json and the figure from per_key.csv and run.json")
    parser.add_argument("--keys", type=int, default=3, help="keys per model and scheme (default 3)")
    parser.add_argument("--machine", default=f"{platform.machine()}, {cpu_model() or 'cpu'}",
                        help="how the machine is described in the report")
    args = parser.parse_args(argv)
    args.command = command_line(MODULE, argv)

    def work() -> Path:
        if args.keys < 1:
            raise FakeGradientError(f"--keys must be >= 1, got {args.keys}")
        if not args.from_stored:
            run(args)
        return report(args.out)

    return run_study(work)


if __name__ == "__main__":
    raise SystemExit(main())
