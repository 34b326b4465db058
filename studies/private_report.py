"""report.md, results.json and private.png of :mod:`studies.private`, from its ``per_image.csv`` and ``run.json``
alone (``--from-stored``): the matrix with paired exact tests against the original, privacy, device cost, and the
decision table per threat model (``results.json``'s ``decision``, which ``scripts/render_docs.py`` renders into
README.md and docs/security.md).

The strongest attacker of a threat model, per scheme, is the admitted attack with the lowest defense rate, among
those that pass the 50 % sanity rule on the original (:func:`too_weak`; all of them if none does); the scheme to
use is the one (controls excluded) whose strongest attacker does worst, ties to the smaller secret.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.paired import mcnemar_exact

from .kit import markdown_table, parse_bool, rate_text, read_csv
from .private_attacks import ATTACKS, QUERY_ATTACKS

CONTROLS = ("scaled-copy", "random-decoy")  # ablations, not protections to deploy: never the scheme to use
REFERENCE = {"aware": "discovery"}  # the original's row an attack is paired with, where it has none of its own

LABELS = {
    "naive": "(a) DeepFool", "pgd": "PGD", "apgd": "APGD", "cw": "C&W", "transfer": "(b) transfer",
    "discovery": "(c) noise discovery + DeepFool", "reverse": "(c′) reverse discovery + DeepFool",
    "aware": "(d) design-aware discovery + DeepFool", "square": "Square", "hopskipjump": "HopSkipJump",
    "qo_square": "query-only Square", "qo_hopskipjump": "query-only HopSkipJump",
    "fileonly": "file-only classifier + DeepFool", "fileonly_pgd": "file-only classifier + PGD",
    "decoder": "(e) labelled read-out + PGD",
}
# threat model → (who the attacker is and what it holds, the attacks it admits)
THREATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "naive white-box client": ("attacks the served outputs with their gradients, no key",
                               ("naive", "pgd", "apgd", "cw")),
    "cloud holding the served file": (("reads the head's rows, runs the model on its own noise, attacks with "
                                      "gradients"), ("naive", "pgd", "apgd", "cw", "discovery", "reverse", "aware",
                                                    "fileonly", "fileonly_pgd")),
    "query-only client": ("sends images, sees the served outputs (Square) or top-1 (HopSkipJump)",
                          ("square", "hopskipjump", "qo_square", "qo_hopskipjump")),
    "labelled-query client": ("sends its own labelled images, learns a read-out, attacks through it",
                              ("decoder",)),
    "transfer attacker": ("never queries: attacks its own surrogate, sends the result", ("transfer",)),
}
TABLES = {  # report.md's matrix, in three tables
    "White box on the served model, transfer, labelled read-out": ("naive", "pgd", "apgd", "cw", "transfer",
                                                                   "decoder"),
    "Query-only: noise discovery, Square and HopSkipJump": ("discovery", "reverse", "aware", "square",
                                                            "hopskipjump", "qo_square", "qo_hopskipjump"),
    "File only: the learned row classifier": ("fileonly", "fileonly_pgd"),
}


def _bool_or_none(text: str) -> bool | None:
    return None if text == "" else parse_bool(text)


def _int_or_none(text: str) -> int | None:
    return None if text == "" else int(text)


def load(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(run.json, scheme → its per-image rows) of a finished run under ``out``."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise FakeGradientError(f"no finished run under {out}: {exc}") from None
    types = {"image": int, "scheme": str, "functionality": parse_bool, **{f"{a}_defended": _bool_or_none for a in ATTACKS},
             **{f"{a}_queries": _int_or_none for a in QUERY_ATTACKS}}
    by: dict[str, list[dict]] = {}
    for row in read_csv(out / "per_image.csv", types):
        by.setdefault(row["scheme"], []).append(row)
    if "original" not in by:
        raise FakeGradientError(f"{out / 'per_image.csv'} has no original rows")
    return record, by


def matrix(by: dict[str, list[dict]]) -> dict[str, dict[str, dict | None]]:
    """scheme → attack → {k, n, only_original, only_scheme, p} on the images the attack ran on (None: not run)."""
    result: dict[str, dict[str, dict | None]] = {}
    base = {r["image"]: r for r in by["original"]}
    for name, rows in by.items():
        result[name] = {}
        for attack in ("functionality", *ATTACKS):
            column = attack if attack == "functionality" else f"{attack}_defended"
            reference = column if attack not in REFERENCE else f"{REFERENCE[attack]}_defended"
            pairs = [(base[r["image"]][reference], r[column]) for r in rows if r[column] is not None]
            if not pairs:
                result[name][attack] = None
                continue
            cell = {"k": sum(b for _, b in pairs), "n": len(pairs)}
            if name != "original" and attack != "functionality" and all(a is not None for a, _ in pairs):
                only_a = sum(bool(a) and not b for a, b in pairs)
                only_b = sum(bool(b) and not a for a, b in pairs)
                cell |= {"only_original": only_a, "only_scheme": only_b, "p": mcnemar_exact(only_a, only_b)}
            result[name][attack] = cell
        for attack in QUERY_ATTACKS:
            used = [r[f"{attack}_queries"] for r in rows if r[f"{attack}_queries"] is not None]
            if used and result[name].get(attack):
                result[name][attack]["median_queries"] = statistics.median(used)
    return result


def _rate(cell: dict | None) -> float:
    return cell["k"] / cell["n"] if cell else float("inf")


def too_weak(baseline: dict | None) -> bool:
    """The 50 % sanity rule: an attack that leaves more than half of the unprotected images defended."""
    return baseline is not None and baseline["k"] > baseline["n"] / 2


def decision(cells: dict[str, dict[str, dict | None]], record: dict) -> list[dict]:
    """One entry per threat model: per scheme the strongest admitted attack; the scheme to use."""
    entries = []
    for threat, (holds, attacks) in THREATS.items():
        strongest = {}
        for name, row in cells.items():
            ran = [a for a in attacks if row.get(a)]
            sane = [a for a in ran if not too_weak(cells["original"].get(REFERENCE.get(a, a)))]
            ran = sane or ran  # an attack too weak on the original is no one's strongest (unless it is the only one)
            if ran:
                worst = min(ran, key=lambda a: (_rate(row[a]), a))
                strongest[name] = {"attack": worst, **row[worst]}
        candidates = [n for n in strongest if n not in CONTROLS and n != "original"]
        cost = record["schemes"]
        if not candidates:  # no scheme ran any attack of this threat model (short runs)
            continue
        best = max(candidates, key=lambda n: (_rate(strongest[n]), -cost[n]["secret_bytes"]))
        pick = strongest[best]
        baseline = cells["original"][REFERENCE.get(pick["attack"], pick["attack"])]
        significant = pick.get("p", 1.0) < 0.05 and pick["k"] / pick["n"] > baseline["k"] / baseline["n"]
        entries.append({"threat": threat, "holds": holds, "attacks": list(attacks), "use": best,
                        "significant": significant, "defended": pick, "original": baseline,
                        "secret_bytes": cost[best]["secret_bytes"],
                        "decrypt_us_per_image": cost[best]["decrypt_us_per_image"],
                        "leak": leak(record, best), "strongest": strongest})
    return entries


def leak(record: dict, name: str) -> dict:
    """What the cloud still learns with scheme ``name``: the read-out's agreement with the owner per labelled
    query count, the fewest labelled queries reaching 90 %, and the noise queries that find the real rows."""
    info = record["schemes"][name]
    n = len(record["splits"]["eval"])
    curve = {int(k): v for k, v in info["readout_curve"].items()}
    enough = next((size for size, k in sorted(curve.items()) if k >= 0.9 * n), None)
    return {"n": n, "readout_curve": curve, "labelled_for_90pct": enough,
            "noise_found": info.get("adaptive_found"), "noise_queries": info.get("adaptive_queries")}


def cell_text(cell: dict | None, original: bool) -> str:
    if cell is None:
        return "—"
    text = rate_text(cell["k"], cell["n"])
    if "median_queries" in cell:
        text += f", median {cell['median_queries']:.0f} q"
    if original:
        return text + (" (too weak)" if too_weak(cell) else "")
    if "p" not in cell:
        return text
    return f"{text}; {cell['only_original']}/{cell['only_scheme']}, p = {cell['p']:.2g}"


def models_text(record: dict) -> str:
    """Where the owner's model and the attacker's surrogate come from, and how good they are (one paragraph)."""
    if "public" not in record:  # the owner trained from scratch
        owner, how = "Owner's CNN (trained from scratch)", "own architecture, own split"
    else:
        owner, how = (f"Public model: {record['public']}; {100 * record['public_eval_accuracy']:.1f} % on the "
                      f"evaluation images. Owner's model: {record['owner']}"), record["surrogate"]
    return (f"{owner}: {100 * record['owner_eval_accuracy']:.1f} % on the evaluation images; the attacker's "
            f"surrogate ({how}): {100 * record['surrogate_eval_accuracy']:.1f} %, agreeing with the owner on "
            f"{100 * record['surrogate_agreement_with_owner']:.1f} %.")


def report(out: Path) -> Path:
    """report.md, results.json and private.png from ``per_image.csv`` and ``run.json`` under ``out``."""
    record, by = load(out)
    cells = matrix(by)
    decided = decision(cells, record)
    n = len(by["original"])
    hard = record.get("hard_images", n)
    start = {"head": ", the owner fine-tunes a public model's head", "block": ", the owner fine-tunes a public "
             "model's last block and head"}.get(record.get("owner_start", "scratch"), "")
    lines = [f"# Fake Gradient on a private model (MNIST-5000{start}, n = {n} evaluation images)", "",
             f"Command: `{record['command']}` ({record['machine']}, {record['seconds']} s). Data: {record['data']}; "
             f"splits owner {len(record['splits']['owner'])} / attacker {len(record['splits']['attacker'])} / "
             f"evaluation {len(record['splits']['eval'])}, disjoint, from seed {record['seed']} (indices in "
             "run.json). Recipe: " + ", ".join(f"{k} {v}" for k, v in record["recipe"].items()) + ".", "",
             models_text(record), "",
             ("Each cell: images whose decrypted top-1 after the attack is still the clean one, k/n = % [95 % Wilson "
             "interval]; then the discordant pairs on the same images (original defended only / scheme defended "
             "only) and the exact two-sided McNemar p against the original. The `original` row is each attack's "
             "sanity baseline (*too weak*: it leaves more than half of the unprotected images defended; such an "
             f"attack is no scheme's strongest in the decision table). Every budget is L2 eps = {record['transfer_eps']} on [0, 1] pixels (the transfer's "
             f"median ‖r‖₂ {record['transfer_median_l2']:.2f}; naive DeepFool's median on the original "
             f"{record['schemes']['original'].get('naive_l2_median', float('nan')):.2f}, unbounded). C&W, Square "
             f"and HopSkipJump ran on the first {hard} evaluation images ({budgets_text(record)} per "
             "image; the query-only adaptive rows count the noise queries of the discovery too)."), ""]
    for title, attacks in TABLES.items():
        rows = [[name, *(cell_text(cells[name].get(a), name == "original") for a in attacks)] for name in cells]
        if title.startswith("White"):
            rows = [[r[0], rate_text(cells[r[0]]["functionality"]["k"], cells[r[0]]["functionality"]["n"]),
                     *r[1:]] for r in rows]
            header = ["scheme", "functionality", *(LABELS[a] for a in attacks)]
        else:
            header = ["scheme", *(LABELS[a] for a in attacks)]
        lines += [f"## {title}", "", *markdown_table(header, rows), ""]
    lines += _notes(record)
    lines += _privacy(record)
    lines += _cost(record)
    lines += _timings(record)
    lines += ["## Decision table", "", *decision_lines(decided), ""]
    path = out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    results = {"n": n, "hard_images": hard, "eps": record["transfer_eps"], "labels": LABELS, "matrix": cells,
               "decision": decided,
               "privacy": {name: leak(record, name) for name in record["schemes"]},
               "cost": {name: {"secret_bytes": info["secret_bytes"], "n_outputs": info["n_outputs"],
                               "decrypt_us_per_image": info["decrypt_us_per_image"]}
                        for name, info in record["schemes"].items()}}
    write_bytes_atomic(out / "results.json", (json.dumps(results, indent=1) + "\n").encode())
    _figure(out / "private.png", cells, n)
    return path


def _notes(record: dict) -> list[str]:
    schemes = record["schemes"]
    found = [[name, f"{info['discovery_found']}/10 (all at {info['queries_needed'] or '> 64'} q)",
              f"{info['reverse_found']}/10",
              f"{info['adaptive_found']}/10 at {info['adaptive_queries']} q" if "adaptive_found" in info else "—",
              f"{info['fileonly_found']}/10 (trained on {info['fileonly_training_heads']} heads)"
              if "fileonly_found" in info else "—"]
             for name, info in schemes.items() if "discovery_found" in info]
    lines = ["## Real rows the attackers found (of 10)", "",
             (f"(c) / (c′): {record['queries']} noise queries, least / most varying kept; query-only adaptive: the "
             "library's doubling discovery (least varying where the scheme's public design says the fakes win, "
             "most varying otherwise; decoys: the N least varying of 3N); file-only: the library's learned row classifier "
             f"trained on the heads of the attacker's own models ({record['row_models']}) protected under "
             f"{record['row_keys']} keys each."), "",
             *markdown_table(["scheme", "(c) least varying", "(c′) most varying", "query-only adaptive",
                              "file-only classifier"], found), ""]
    if "aware_found" in schemes.get("decoys", {}):
        lines += [(f"(d) decoys, design-aware (the 2N least varying): {schemes['decoys']['aware_found']}/10 real among "
                  "them."), ""]
    lines += [("Notes: (b) cannot differ between schemes: the served model computes the owner's function and the "
              "attacker never queries it. On `original` there is nothing to discover or classify: its query-only "
              "and file-only DeepFool rows are the naive runs (the same attack on the same outputs). `device-head` "
              "and `mixing` serve no output that is a class: no discovery or row classifier applies (—); on "
              "`device-head` the naive attacks treat the 128 served features as scores, and (e) is the "
              "feature-space attacker (its own head on the served features, trained on its labelled queries). "
              "(e) is invariant to any affine map of the served outputs: on `mixing` it equals the original. "
              "Where the query-only discovery found all N real rows and their outputs equal the original's logits "
              "(max gap ≤ 1e-4 on the attacked images), the query-only attacker faces the original's scores up to "
              "a column order, so its Square / HopSkipJump rows are the original's runs on the same images "
              "(queries: those plus the discovery's), not re-run: "
              + (", ".join(f"`{n}`" for n, i in record["schemes"].items() if i.get("qo_reused_original")) or "none")
              + "."), ""]
    return lines


def _privacy(record: dict) -> list[str]:
    n = len(record["splits"]["eval"])
    sizes = record["readout_sizes"]
    rows = []
    for name, info in record["schemes"].items():
        curve = {int(k): v for k, v in info["readout_curve"].items()}
        item = leak(record, name)
        noise = (f"{item['noise_found']}/10 at {item['noise_queries']}" if item["noise_found"] is not None
                 else ("all 10 served (0)" if name == "original" else "none is a class"))
        rows.append([name, noise, item["labelled_for_90pct"] or f"> {max(curve)}",
                     *(rate_text(curve[s], n) if s in curve else "—" for s in sizes)])
    return ["## Privacy: queries the cloud needs to name the real class", "",
            ("Noise queries: the query-only adaptive discovery's real rows found and uniform-noise images spent "
            "(finding the rows does not name their classes). Labelled queries: the attacker's own labelled images "
            "from which a linear read-out of the served outputs names the owner's class on the evaluation images "
            "(k/n), and the fewest of those tried reaching 90 %."), "",
            *markdown_table(["scheme", "noise: real rows found at queries", "labelled for ≥ 90 %",
                             *(f"read-out, {s} labelled" for s in sizes)], rows), ""]


def budgets_text(record: dict) -> str:
    """The black-box budgets as run.json records them: "Square 1000 queries, HopSkipJump 2000 queries (…)";
    "500 queries" for a run before they were separate."""
    if "bb_queries" in record:
        return f"{record['bb_queries']} queries"
    hsj = record.get("hsj_params")
    return (f"Square {record['square_queries']} queries, HopSkipJump {record['hsj_queries']} queries"
            + (f" ({', '.join(f'{k} {v}' for k, v in hsj.items())})" if hsj else ""))


def _timings(record: dict) -> list[str]:
    """Wall seconds per stage (run.json's ``stage_seconds``): the shared stages, then each scheme's."""
    stages = sorted({stage for info in record["schemes"].values() for stage in info.get("stage_seconds", {})})
    if not stages:
        return []
    shared = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in record.get("stage_seconds", {}).items())
    rows = [[name, f"{info['seconds']:.0f}", *(f"{info['stage_seconds'][s]:.0f}" if s in info["stage_seconds"]
                                                 else "—" for s in stages)]
            for name, info in record["schemes"].items()]
    return ["## Time per stage", "", f"Wall seconds ({record['machine']}); before the schemes: {shared}.", "",
            *markdown_table(["scheme", "total", *stages], rows), ""]


def _cost(record: dict) -> list[str]:
    cost = [[name, info["n_outputs"], info["secret_bytes"], f"{info['decrypt_us_per_image']:.1f}",
             "—" if info.get("fakes_win_pct") is None else f"{info['fakes_win_pct']:.0f} %"]
            for name, info in record["schemes"].items()]
    return ["## Device cost", "", ("Secret bytes: the file the device keeps; decryption: best of 5, 1000 images "
            f"one at a time, numpy ({record['machine']})."), "",
            *markdown_table(["scheme", "served outputs", "secret bytes", "decrypt µs / image",
                             "fakes win (eval images)"], cost), ""]


def decision_lines(decided: list[dict]) -> list[str]:
    """The decision table as markdown lines (scripts/render_docs.py formats results.json the same way)."""
    rows = []
    for entry in decided:
        pick, base, item = entry["defended"], entry["original"], entry["leak"]
        curve = item["readout_curve"]
        top = max(curve)
        verdict = entry["use"] if entry["significant"] else f"none better than the original ({entry['use']} best)"
        p = f"{pick['only_original']}/{pick['only_scheme']}, p = {pick['p']:.2g}" if "p" in pick else "—"
        rows.append([f"{entry['threat']}: {entry['holds']}", verdict,
                     f"{rate_text(pick['k'], pick['n'])} ({LABELS[pick['attack']]})",
                     rate_text(base["k"], base["n"]), p, entry["secret_bytes"],
                     f"{entry['decrypt_us_per_image']:.1f}",
                     f"read-out names the owner's class on {rate_text(curve[top], item['n'])} after {top} labelled "
                     f"queries (≥ 90 % from {item['labelled_for_90pct'] or f'> {top}'})"
                     + (f"; noise finds {item['noise_found']}/10 real rows in {item['noise_queries']} queries"
                        if item["noise_found"] is not None else "")])
    return markdown_table(["threat model", "use", "defense vs its strongest attack", "original, same attack",
                           "vs original", "secret bytes", "decrypt µs/image", "what it still leaks"], rows)


def _figure(path: Path, cells: dict[str, dict[str, Any]], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names, attacks = list(cells), list(ATTACKS)
    values = np.full((len(names), len(attacks)), np.nan)
    for i, name in enumerate(names):
        for j, attack in enumerate(attacks):
            cell = cells[name].get(attack)
            if cell:
                values[i, j] = 100 * cell["k"] / cell["n"]
    fig, ax = plt.subplots(figsize=(14, 6))
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i, name in enumerate(names):
        for j, attack in enumerate(attacks):
            cell = cells[name].get(attack)
            if cell:
                ax.text(j, i, f"{cell['k']}/{cell['n']}", ha="center", va="center", fontsize=6,
                        color="white" if values[i, j] < 60 else "black")
            else:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="grey"))
    ticks = [LABELS[a] + (" (too weak)" if too_weak(cells["original"].get(a)) else "") for a in attacks]
    ax.set_xticks(range(len(attacks)), ticks, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(image, ax=ax, label="defense success, % (k/n in each cell; hatched: not applicable)")
    ax.set_title(f"Private MNIST CNN: defense success per scheme and attacker (n = {n}; C&W and black box on a "
                 "subset, see k/n)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
