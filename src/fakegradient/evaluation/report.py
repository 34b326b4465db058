"""Writing an evaluation: report.md (Table 1 beside the paper's), results.json, per_image.csv, PNGs."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from ..data import BUNDLED_PHOTOS
from ..defaults import EMBEDDED_DATA, TOO_WEAK
from ..errors import FakeGradientError
from ..methods import FAKE_GRADIENT, METHODS, ORIGINAL, PROTECTIONS, controls
from . import figures, intervals, paired
from .config import PHOTOS_DATA
from .paper import paper_value
from .records import aggregate_by, fake_class_table, l2_ratios
from .runner import EvaluationResult, ModelEvaluation
from .stages.attackers import ATTACKERS, BUDGET_TEXT
from .summary import AdaptiveResult

TABLE1_ROWS = [  # label, metric, the methods it is reported for (registry order), format
    ("Fake Output (%)", "fake_output_pct", PROTECTIONS, "{:.0f}"),
    ("Original Functionality (%)", "original_functionality_pct", PROTECTIONS, "{:.0f}"),
    ("Defense Success Rate (%)", "defense_success_pct", tuple(METHODS), "{:.1f}"),
    ("ρ pixels = ‖r‖₂/‖x‖₂, x in [0, 1] (mean)", "rho_mean", tuple(METHODS), "{:.5f}"),
    ("ρ normalised = ‖r_z‖₂/‖z‖₂, z = (x − μ)/σ (mean)", "rho_normalized_mean", tuple(METHODS), "{:.5f}"),
    ("‖r‖₂ here / ‖r‖₂ on the original, same image (median)", "l2_ratio_median", PROTECTIONS, "{:.2f}"),
]
RATE_METRICS = {"fake_output_pct", "original_functionality_pct", "defense_success_pct"}
METHOD_NAMES = {name: m.display for name, m in METHODS.items()}
MANIFEST = ".report-files.json"  # the names of the files the last report wrote into its folder
REPORT_FILES = ("fig*.png", "*.csv", "results.json", "report.md")  # what a report may own (and so remove)


def write_report(result: EvaluationResult, out: Path, title: str = "Fake Gradient evaluation") -> list[Path]:
    """Write every output into ``out``; returns the paths written. The files an earlier report wrote there (listed
    in ``out/.report-files.json``) and this one did not are removed: no earlier figure is left beside the new
    report. No other file is touched."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FakeGradientError(f"cannot create {out}: {exc.strerror or exc}") from None
    earlier = _owned(out)
    written = _write_all(result, out, title)
    for name in earlier - {p.name for p in written}:
        try:
            os.unlink(out / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FakeGradientError(f"cannot remove the earlier report's {out / name}: {exc.strerror or exc}") from None
    write_bytes_atomic(out / MANIFEST, json.dumps(sorted(p.name for p in written)).encode())
    return written


def _owned(out: Path) -> set[str]:
    """The file names the earlier report in ``out`` wrote (none if it left no readable list): only plain names of
    the kinds a report writes."""
    try:
        names = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return set()
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n == Path(n).name and not n.startswith(".")
            and any(fnmatch.fnmatchcase(n, pattern) for pattern in REPORT_FILES)}


def _write_all(result: EvaluationResult, out: Path, title: str) -> list[Path]:
    aggregates = aggregate_by(result.records)
    written = [*_figures(result, out)]
    ratios = [{"l2_ratio_to_original": ratio} for ratio in l2_ratios(result.records)]
    written.append(_write(out / "per_image.csv", _csv(result.records, ratios)))
    adaptive = [e for e in result.evaluations if e.adaptive]
    if adaptive:
        matrix = [{"model": e.name} | row for e in adaptive for row in e.adaptive.matrix()]
        written.append(_write(out / "attackers.csv", _rows_csv(matrix)))
        written.append(_write(out / "attackers_per_image.csv", _csv([r for e in adaptive for r in e.adaptive.records])))
    payload = {
        "paired": {"method": paired.METHOD, "defense_success": _table1_tests(result)},
        "config": result.config.to_dict(),
        "command": result.config.command(),
        "data": _data_description(result),
        "intervals": intervals.METHOD + " interval of each rate: <metric>_ci95 in percent, of <metric>_k out of "
                     "<metric>_n images",
        "environment": result.environment,
        "skipped": result.skipped,
        "evaluation_seeds": {e.name: e.seed for e in result.evaluations},  # experiment keys, never deployed
        "aggregates": [{"model": m, "method": k} | v for (m, k), v in aggregates.items()],
        "overhead": {e.name: e.overhead for e in result.evaluations},
        "adaptive": {e.name: {"matrix": e.adaptive.matrix(), "key_recovery": e.adaptive.key_recovery,
                              "privacy": e.adaptive.privacy(), "device_cost": e.adaptive.device_cost,
                              "budgets": e.adaptive.budgets, "curves": e.adaptive.curves,
                              "distinct_seconds": e.adaptive.distinct_seconds(),
                              "distinct_cpu_seconds": e.adaptive.distinct_seconds("own_cpu_s"),
                              "roofline_timing_seconds": e.adaptive.timing_overhead(),
                              "threat_models": {a: {"holds": t.holds, "threat": t.threat, "budget": t.budget,
                                                    "key_recovery": t.key_recovery}
                                                for a, t in ATTACKERS.items()},
                              "seeds": {"evaluation_seed": e.seed, "attack_generators": "numpy default_rng([seed, "
                                        "crc32(attacker), first image index]) per shard; noise images: torch "
                                        "Generator(seed); feature-space restarts r use seed r"}}
                     for e in adaptive},
    }
    written.append(_write(out / "results.json", json.dumps(payload, indent=2).encode()))
    written.append(_write(out / "report.md", _markdown(result, aggregates, title).encode()))
    return written


def _write(path: Path, data: bytes) -> Path:
    write_bytes_atomic(path, data)
    return path


def _rows_csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _csv(records: list, columns: list[dict] | None = None) -> bytes:
    """Rows of dataclass records, with their derived properties (functionality, defense_success) and
    ``columns[i]``: more values for record i."""
    buffer = io.StringIO()
    if records:
        extra = [p for p in ("functionality", "defense_success")
                 if p not in asdict(records[0]) and hasattr(records[0], p)]
        added = list(columns[0]) if columns else []
        writer = csv.DictWriter(buffer, fieldnames=[*asdict(records[0]).keys(), *extra, *added])
        writer.writeheader()
        for i, r in enumerate(records):
            writer.writerow(asdict(r) | {p: getattr(r, p) for p in extra} | (columns[i] if columns else {}))
    return buffer.getvalue().encode()


def _data_description(result: EvaluationResult) -> dict:
    """How many distinct photos (by file name), how many labelled, and where they came from."""
    images = {r.image: r.label for r in result.records}
    labelled = sum(label is not None for label in images.values())
    if result.config.data in (EMBEDDED_DATA, PHOTOS_DATA):
        bundled = {path.rsplit("/", 1)[-1]: (package, what) for package, path, what in BUNDLED_PHOTOS}
        sources = [f"{len(images) - sum(name in bundled for name in images)} labelled ImageNet validation "
                   "photos shipped in foolbox's wheel"]
        sources += [f"unlabelled: {what} ({package}, {name})" for name, (package, what) in bundled.items()
                    if name in images]
    else:
        sources = [f"ImageFolder {result.config.data}"]
    return {"name": result.config.data, "distinct_photos": len(images), "labelled": labelled, "sources": sources}


def _cell(aggregate: dict | None, metric: str, fmt: str, paper: float | None) -> str:
    """One Table 1 cell: a rate as ``pct [low–high] n=…`` with the paper's value and whether it lies inside."""
    if aggregate is None or aggregate.get(metric) is None:
        return "—"
    if metric not in RATE_METRICS:
        return fmt.format(aggregate[metric]) + (f" ({fmt.format(paper)})" if paper is not None else "")
    rate = intervals.Rate(aggregate[f"{metric}_k"], aggregate[f"{metric}_n"])
    text = rate.text()
    if paper is not None:
        text += f" ({fmt.format(paper)} {'✓' if rate.contains(paper) else '✗'})"
    return text


def _markdown(result: EvaluationResult, aggregates: dict, title: str) -> str:
    config = result.config
    names = [e.name for e in result.evaluations]
    lines = [f"# {title}", "", f"Command: `{config.command()} --out DIR`.", ""]
    data = _data_description(result)
    lines += [
        f"Data: `{config.data}`: {data['distinct_photos']} distinct photos ({data['labelled']} labelled; clean "
        f"accuracy uses those only, every other metric scores against the original model's clean top-1): "
        + "; ".join(data["sources"]) + ".",
        "",
        f"Attack ({'pixel space, images in [0, 1]' if config.space == 'pixel' else 'on the normalised tensor z = (x − μ)/σ, as the released code'}): our DeepFool (top-{config.candidates} candidates "
        f"among the served model's outputs, overshoot {config.overshoot}, ≤ {config.max_iter} iterations, "
        f"clipping to [0, 1] {'on' if config.clip else 'off (as in the reference)'}), on the *served* model. "
        f"Keys: {'seed ' + str(config.seed) + ' (reproducible experiment — not secure)' if config.seed is not None else 'seeded from the CSPRNG per run (not reproducible)'}; "
        f"S_a = {config.scale}; fake biases: "
        f"{'b_F = b_o (the paper' + chr(39) + 's text)' if config.bias == 'paper' else 'S_a (max b − |b|) sign(b) (the released code)'}.",
        "",
        "Defense success = the decrypted real top-1 on the attacked image equals the original model's clean "
        "top-1 (for the original model: 100 % − the attack's success rate). Rates: ours in %, "
        f"[{intervals.METHOD} interval] and n images. Paper values (ImageNet, Table 1) in parentheses, only for the "
        "paper's own architectures: ✓ the paper's value lies inside our interval (no disagreement), ✗ outside "
        "(a disagreement). ρ has no interval; the paper does not say in which space its ρ was measured (its "
        "\"L2\" helper is missing from the release), so both are shown.",
        "",
        "## Table 1",
        "",
        "| Metric | Method | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for label, metric, methods, fmt in TABLE1_ROWS:
        for method in methods:
            if not any((n, method) in aggregates for n in names):
                continue
            cells = [_cell(aggregates.get((n, method)), metric, fmt, paper_value(metric, method, n)) for n in names]
            lines.append(f"| {label} | {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    lines += _table1_paired(result)
    lines += ["", "## Perturbation and attack detail", "",
              "| Model | Method | images | attack changed served top-1 (%) | median ρ pixels | median ρ normalised "
              "| median ‖r‖₂ | median ‖r‖₂ ratio to original | median ‖r‖∞ | mean iterations | "
              "original clean accuracy (%, labelled photos) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (n, method), a in aggregates.items():
        ratio = "—" if a["l2_ratio_median"] is None else f"{a['l2_ratio_median']:.2f} (n={a['l2_ratio_n']})"
        accuracy = "—" if a["original_accuracy_pct"] is None else intervals.Rate(
            a["original_accuracy_pct_k"], a["original_accuracy_pct_n"]).text()
        lines.append(f"| {n} | {METHOD_NAMES[method]} | {a['images']} | "
                     f"{intervals.Rate(a['attack_changed_served_pct_k'], a['images']).text()} | "
                     f"{a['rho_median']:.5f} | {a['rho_normalized_median']:.5f} | {a['l2_median']:.4f} | {ratio} | "
                     f"{a['linf_median']:.4f} | {a['iterations_mean']:.2f} | {accuracy} |")
    lines += _adaptive(result) + _table2(result) + _overhead(result)
    if result.skipped:
        lines += ["", "## Skipped models", ""] + [f"- `{s['model']}`: {s['reason']}" for s in result.skipped]
    env = result.environment
    lines += ["", f"Environment: torch {env['torch']}, torchvision {env['torchvision']}, "
                  f"Python {env['python']}, {env['cpu_threads']} CPU threads, CPU: {env.get('cpu', 'not recorded')}, "
                  f"CUDA: {env['cuda']}.",
              "Files: `results.json` (config, versions, aggregates), `per_image.csv`, "
              "`fig6_*.png`, `fig7_size.png`, `fig8_time.png`.", ""]
    return "\n".join(lines)


def _table1_tests(result: EvaluationResult) -> list[dict]:
    """Defense success of each scheme against the original, and of each control against Fake Gradient,
    paired by image (the differences Table 1 invites)."""
    outcomes: dict[tuple[str, str], dict[str, bool]] = {}
    for r in result.records:
        outcomes.setdefault((r.model, r.method), {})[r.image] = r.defense_success
    present = list(dict.fromkeys(m for _, m in outcomes))
    pairs = [(m, ORIGINAL) for m in present if m != ORIGINAL]
    pairs += [(m, FAKE_GRADIENT) for m in present if m in controls()]
    return paired.comparisons(outcomes, pairs)


def _table1_paired(result: EvaluationResult) -> list[str]:
    rows = _table1_tests(result)
    if not rows:
        return []
    lines = ["", "## Paired tests of defense success", "",
             f"Each pair of arms on the same images: the images defended in one arm only, and p ({paired.METHOD}). "
             "A difference is shown only where p < 0.05; otherwise it is not significant at this n.", "",
             "| Model | A | B | images | defended by A only | defended by B only | p | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "shown" if r["p"] < 0.05 else f"not significant at n = {r['pairs']}"
        lines.append(f"| {r['model']} | {METHOD_NAMES[r['a']]} | {METHOD_NAMES[r['b']]} | {r['pairs']} | "
                     f"{r['only_a']} | {r['only_b']} | {r['p']:.2g} | {verdict} |")
    return lines


def _adaptive(result: EvaluationResult) -> list[str]:
    lines = []
    for e in result.evaluations:
        if e.adaptive:
            lines += _matrix_section(e)
    return lines


def _cell_text(row: dict | None) -> str:
    if row is None:
        return "n/a"
    text = f"{row['k']}/{row['n']} = {row['rate_pct']:.0f} % [{row['ci95_low_pct']:.0f}–{row['ci95_high_pct']:.0f}]"
    if row.get("p_vs_original") is not None:
        text += f", p = {row['p_vs_original']:.2g}"
    if row.get("under_powered"):  # the numbers once, in the baseline's cell
        text += " — under-powered" + (f" (DeepFool changes {row['deepfool_within_k']}/{row['n']} within the budget)"
                                      if row["method"] == ORIGINAL else "")
    return text + (" — too weak to mean anything" if row["too_weak"] else "")


def _budget_text(attacker: str, budgets: dict[str, float]) -> str:
    budget = ATTACKERS[attacker].budget
    return BUDGET_TEXT[budget].format(**budgets) if budget else "unbounded (minimum norm)"


def _matrix_section(e: ModelEvaluation) -> list[str]:
    adaptive, config_name = e.adaptive, e.name.split(":")[0]
    rows = {(r["method"], r["attacker"]): r for r in adaptive.matrix()}
    methods = list(dict.fromkeys(m for m, _ in rows))
    attackers = [a for a in ATTACKERS if any((m, a) in rows for m in methods)]
    budgets = adaptive.budgets
    lines = ["", f"## Adaptive attackers: {e.name}", "",
             "Each cell: images whose device answer (the decrypted real top-1; for split inference the device "
             "head's top-1) is still the original clean top-1 after the attack — **defense success**, k/n, % "
             f"[{intervals.METHOD} interval]. The *Original Model* column is every row's sanity baseline: the "
             f"same attack at the same budget on the unprotected model; where it succeeds on fewer than "
             f"{100 * TOO_WEAK:.0f} % of the images there, the whole row is marked *too weak to mean "
             "anything*; an iterative white-box row (PGD, EOT-PGD, APGD, C&W) that breaks fewer unprotected images "
             "than DeepFool changes within the same budget is *under-powered*: its protected cells understate "
             f"the attack. p: {paired.METHOD} of the scheme against the original on the same images (p ≥ 0.05: "
             "not significant at that n). Lower is worse for the defense. L2 budgets are in [0, 1] pixel space; "
             "the base scale is "
             f"the median DeepFool ‖r‖₂ on the original, {budgets['base_l2']:.4f}.", "",
             "| Attacker | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for a in attackers:
        lines.append(f"| {a} | " + " | ".join(_cell_text(rows.get((m, a))) for m in methods) + " |")
    lines += ["", "Threat model of each row (what the attacker holds; budget; images):", "",
              "| Attacker | holds | threat model | budget | images | median queries (per scheme) |",
              "|---|---|---|---|---|---|"]
    for a in attackers:
        spec, cells = ATTACKERS[a], [rows.get((m, a)) for m in methods]
        n = sorted({c["n"] for c in cells if c})
        queries = ", ".join(f"{METHOD_NAMES[m]} {c['median_queries']:.0f}" for m, c in zip(methods, cells)
                            if c and c["median_queries"] is not None) or "—"
        lines.append(f"| {a} | {spec.holds} | {spec.threat} | {_budget_text(a, budgets)} | "
                     f"{'/'.join(map(str, n))} | {queries} |")
    lines += _timing_table(adaptive, rows, methods, attackers)
    for a in attackers:  # attacks run at several budgets: their curve as k/n
        curves = adaptive.curves.get(a, {})
        if not any(rows.get((m, a)) and len(curves.get(m, [])) > 1 and a in adaptive.multi_budget for m in methods):
            continue
        grid = [eps for eps, _ in next(iter(curves.values()))]
        lines += ["", f"{a} at each budget it was run at (defense success k/n [{intervals.METHOD} interval]):", "",
                  "| ‖r‖₂ ≤ | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |", "|---|" + "---|" * len(methods)]
        for i, eps in enumerate(grid):
            cells = []
            for m in methods:
                n = rows[(m, a)]["n"] if (m, a) in rows else 0
                k = round(curves[m][i][1] * n / 100) if n else None
                low, high = intervals.Rate(k, n).ci95_pct if n else (0, 0)
                cells.append("—" if k is None else f"{k}/{n} [{low:.0f}–{high:.0f}]")
            lines.append(f"| {eps:.3f} ({eps / budgets['base_l2']:.2g}× base) | " + " | ".join(cells) + " |")
    lines += ["", "Key recovery (what each attacker learnt; recovered = share of the real served positions it "
              "names as real, chance 50 %; mapped = share of classes whose position it names exactly; time "
              "on a contended 2-core VM):", "",
              "| Scheme | attacker | oracle | recovered (%) | mapped (%) | queries | time (s) |",
              "|---|---|---|---|---|---|---|"]
    pct = (lambda v: "—" if v is None else f"{v:.1f}")
    for m, by_attacker in adaptive.key_recovery.items():
        for a, k in by_attacker.items():
            lines.append(f"| {METHOD_NAMES[m]} | {a} | {k['oracle']} | {pct(k['recovered_pct'])} | "
                         f"{pct(k['mapped_pct'])} | {k['queries']} | {k['seconds']:.3f} |")
    privacy = adaptive.privacy()
    size = e.overhead["size"]
    lines += ["", "Per scheme: **privacy** = images whose real top-1 the cloud names with its best key-recovery "
              "attacker (k/n, Wilson 95 %); what the device keeps; its numpy time per image to get the real top-1 "
              "from the served outputs (median, contended VM); the served model's size.", "",
              "| Scheme | privacy: cloud names the real top-1 | best attacker | device keeps (bytes) | "
              "device time per image (µs) | served state dict (bytes) |", "|---|---|---|---|---|---|"]
    for m in methods:
        p, cost = privacy.get(m), adaptive.device_cost.get(m, {})
        named = "—" if p is None else intervals.Rate(p["k"], p["n"]).text()
        best = "— (outputs served in clear)" if m == ORIGINAL else p["attacker"] if p else "—"
        lines.append(f"| {METHOD_NAMES[m]} | {named} | {best} | "
                     f"{cost.get('device_bytes', 0):,} | {1e6 * cost.get('decrypt_s_median', 0):.1f} | "
                     f"{size[m]['bytes']:,} |" if m in size else f"| {METHOD_NAMES[m]} | {named} | — | — | — | — |")
    lines += ["", f"Figures: `fig_matrix_{config_name}.png` (the matrix: k/n in each cell; hatched: too weak, "
                  f"under-powered, or fewer than {SMALL_N} images), `fig_budgets_{config_name}.png` (defense success "
                  "against the L2 budget as measured: a line with its Wilson band for an attack run at several "
                  "budgets, a point with its Wilson interval at the one budget of any other; minimum-norm attacks "
                  "without a budget appear in the matrix only). Files: `attackers.csv` (one row per scheme × "
                  "attacker), `attackers_per_image.csv`.", ""]
    return lines


def _timing_cell(row: dict | None) -> str:
    if row is None or row.get("own_seconds") is None:
        return "—"
    fraction = row.get("roofline_fraction")
    text = f"{row['own_seconds']:.1f} s" + ("" if fraction is None else f", {fraction:.2f} of roofline")
    return text + (f" (reuses {row['reused']})" if row.get("reused") else "")


def _timing_table(adaptive: AdaptiveResult, rows: dict, methods: list[str], attackers: list[str]) -> list[str]:
    """Each row's own time and fraction of roofline per scheme; none for a run stored before they were
    measured (its matrix rows lack ``own_seconds``)."""
    distinct = adaptive.distinct_seconds()
    if distinct is None:
        return []
    charged = sum(r["seconds"] or 0.0 for r in rows.values())
    lines = ["", "Time per attacker: each cell is the row's own wall time (a computation shared by several rows — "
             "memoised, e.g. the feature-space attack replayed on every scheme, PGD's original row reused by "
             "EOT-PGD, a black-box run reused where the scores are provably the original's — is counted once, at "
             "the row that ran it; *reuses* names that row) and its **fraction of roofline**: the forward and "
             "backward passes the row ran, each kind timed alone on the same model (median of 3, once per "
             "worker), over its wall time (1: nothing but passes; learned-rows' time includes fitting its row "
             "classifier). Passes and seconds per row: `attackers.csv`.",
             "", "| Attacker | " + " | ".join(METHOD_NAMES[m] for m in methods) + " | own seconds, all schemes |",
             "|---|" + "---|" * (len(methods) + 1)]
    for a in attackers:
        cells = [rows.get((m, a)) for m in methods]
        if all(c is None or c.get("own_seconds") is None for c in cells):
            continue  # round 1 (naive, transfer): not timed per row
        total = sum(c["own_seconds"] or 0.0 for c in cells if c and c.get("own_seconds") is not None)
        lines.append(f"| {a} | " + " | ".join(_timing_cell(c) for c in cells) + f" | {total:.1f} |")
    cpu = adaptive.distinct_seconds("own_cpu_s")
    cpu_text = "" if cpu is None else f", {cpu:.1f} s of CPU time (its process's, every thread)"
    lines += ["", f"Distinct computation, all rows: {distinct:.1f} s ({distinct / 60:.1f} min){cpu_text}; "
              "the `seconds` column of `attackers.csv`, which charges a shared computation to every row "
              f"using it, sums to {charged:.1f} s. Timing the passes for the rooflines took "
              f"{adaptive.timing_overhead():.1f} s more."]
    return lines


def _table2(result: EvaluationResult) -> list[str]:
    lines = ["", "## Table 2: fake classes without the key permutation", "",
             "Top-1 index among the 2N un-permuted outputs `[real 0..N-1, fake N..2N-1]` of the Fake Gradient "
             "model, grouped by the original model's class. Index N + c would mean the fake output mirrors "
             "the real class c.", ""]
    for e in result.evaluations:
        records = [r for r in e.records if r.method == FAKE_GRADIENT]
        if not records or e.n_real == 0:
            continue
        table = fake_class_table(records, e.n_real)
        mirrors = sum(r.plain_top1 == e.n_real + r.original_top1 for r in records)
        distinct = len({r.plain_top1 for r in records})
        lines += [f"**{e.name}**: {distinct} distinct fake indices for {len(table)} classes over {len(records)} "
                  f"images; the fake index mirrors the real class for {mirrors}.", "",
                  "| original class | images → un-permuted top-1 index |", "|---|---|"]
        for cls, items in table.items():
            lines.append(f"| {cls} | " + ", ".join(f"{img} → {idx}" for img, idx in items) + " |")
        lines.append("")
    return lines


def _overhead(result: EvaluationResult) -> list[str]:
    lines = ["## Figures 7 and 8: size and inference time", "",
             "| Model | Variant | parameters | bytes (state dict) | size increase | median time, batch 1 (ms) "
             "| IQR (ms) | time increase |", "|---|---|---|---|---|---|---|---|"]
    for e in result.evaluations:
        size, time = e.overhead["size"], e.overhead["time"]
        base_b, base_t = size[ORIGINAL]["bytes"], time[ORIGINAL]["median_s"]
        for variant in size:
            s, t = size[variant], time[variant]
            lines.append(
                f"| {e.name} | {METHOD_NAMES[variant]} | {s['parameters']:,} | {s['bytes']:,} | "
                f"{100 * (s['bytes'] / base_b - 1):+.1f} % | {1e3 * t['median_s']:.2f} | "
                f"{1e3 * t['q1_s']:.2f}–{1e3 * t['q3_s']:.2f} | {100 * (t['median_s'] / base_t - 1):+.1f} % |")
    return lines + [""]


SMALL_N = 10  # a matrix cell on fewer images is hatched in the figure


def _caveats(row: dict) -> list[str]:
    """Why a matrix cell means little (the figure hatches it): keys of :data:`figures.HATCHES`."""
    return [name for name, hit in (("too weak", row["too_weak"]), ("under-powered", row.get("under_powered")),
                                   ("n < 10", row["n"] < SMALL_N)) if hit]


def _measured_curves(adaptive: AdaptiveResult, rows: dict, methods: list[str]) -> dict[str, dict[str, list]]:
    """attacker → scheme → [(eps, k, n)] as measured: every budget of an attack run at several, else the one
    budget it ran at; minimum-norm attacks without a budget are left out (the matrix shows them). ``rows``:
    (scheme, attacker) → its matrix row."""
    out = {}
    for a in ATTACKERS:
        by_method = {}
        for m in methods:
            row = rows.get((m, a))
            if row is None:
                continue
            if a in adaptive.multi_budget and m in adaptive.curves.get(a, {}):
                by_method[m] = [(eps, round(pct * row["n"] / 100), row["n"]) for eps, pct in adaptive.curves[a][m]]
            elif row["budget_l2"] is not None:
                by_method[m] = [(row["budget_l2"], row["k"], row["n"])]
        if by_method:
            out[a] = by_method
    return out


def _adaptive_figures(e: ModelEvaluation, out: Path) -> list[Path]:
    name = e.name.split(":")[0]
    rows = {(r["method"], r["attacker"]): r for r in e.adaptive.matrix()}
    methods = list(dict.fromkeys(m for m, _ in rows))
    attackers = [a for a in ATTACKERS if any((m, a) in rows for m in methods)]
    values = np.array([[rows[m, a]["rate_pct"] if (m, a) in rows else np.nan for m in methods] for a in attackers])
    text = [[f"{rows[m, a]['k']}/{rows[m, a]['n']}" if (m, a) in rows else "n/a" for m in methods]
            for a in attackers]
    caveats = [[_caveats(rows[m, a]) if (m, a) in rows else [] for m in methods] for a in attackers]
    matrix, curves = out / f"fig_matrix_{name}.png", out / f"fig_budgets_{name}.png"
    figures.matrix_heatmap(matrix, values, text, attackers, [METHOD_NAMES[m] for m in methods],
                           f"Defense success (%), scheme × attacker, {e.name}", caveats)
    figures.budget_curves(curves, _measured_curves(e.adaptive, rows, methods), METHOD_NAMES,
                          f"Defense success vs L2 budget, {e.name}", ORIGINAL)
    return [matrix, curves]


def _figures(result: EvaluationResult, out: Path) -> list[Path]:
    written = []
    for e in result.evaluations:
        if {FAKE_GRADIENT, ORIGINAL} <= e.heatmaps.keys():
            path = out / f"fig6_{e.name.split(':')[0]}.png"
            figures.perturbation_heatmaps(path, e.heatmap_images, e.heatmaps[FAKE_GRADIENT],
                                          e.heatmaps[ORIGINAL], f"DeepFool perturbations, {e.name}")
            written.append(path)
    for e in result.evaluations:
        if e.adaptive:
            written += _adaptive_figures(e, out)
    if not result.evaluations:
        return written
    names = [e.name.split(":")[0] for e in result.evaluations]
    variants = list(result.evaluations[0].overhead["size"])
    sizes = {METHOD_NAMES[v]: [e.overhead["size"][v]["bytes"] / 2**20 for e in result.evaluations] for v in variants}
    figures.grouped_bars(out / "fig7_size.png", names, sizes, "MiB (state dict)", "Model size")
    times = {METHOD_NAMES[v]: [1e3 * e.overhead["time"][v]["median_s"] for e in result.evaluations] for v in variants}
    spreads = {METHOD_NAMES[v]: [(1e3 * e.overhead["time"][v]["q1_s"], 1e3 * e.overhead["time"][v]["q3_s"])
                                 for e in result.evaluations] for v in variants}
    figures.grouped_bars(out / "fig8_time.png", names, times, "ms per image (median, IQR)",
                         "Inference time, batch 1", spreads)
    return written + [out / "fig7_size.png", out / "fig8_time.png"]
