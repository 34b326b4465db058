"""Writing an evaluation: report.md (Table 1 beside the paper's), results.json, per_image.csv, PNGs."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from ..atomic import write_bytes_atomic
from ..data import BUNDLED_PHOTOS
from ..defaults import EMBEDDED_DATA
from ..errors import FakeGradientError
from ..methods import METHODS, ORIGINAL, PROTECTIONS
from . import figures, intervals
from .config import PHOTOS_DATA
from .paper import paper_value
from .records import ATTACKERS, aggregate_by, fake_class_table, l2_ratios, summarize
from .runner import EvaluationResult

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


def write_report(result: EvaluationResult, out: Path, title: str = "Fake Gradient evaluation") -> list[Path]:
    """Write every output into ``out``; returns the paths written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FakeGradientError(f"cannot create {out}: {exc.strerror or exc}") from None
    aggregates = aggregate_by(result.records)
    written = [*_figures(result, out)]
    ratios = [{"l2_ratio_to_original": ratio} for ratio in l2_ratios(result.records)]
    written.append(_write(out / "per_image.csv", _csv(result.records, ratios)))
    adaptive_records = [r for e in result.evaluations if e.adaptive for r in e.adaptive.records]
    if adaptive_records:
        written.append(_write(out / "attackers.csv", _csv(adaptive_records)))
    payload = {
        "config": result.config.to_dict(),
        "data": _data_description(result),
        "intervals": intervals.METHOD + " interval of each rate: <metric>_ci95 in percent, of <metric>_k out of "
                     "<metric>_n images",
        "environment": result.environment,
        "skipped": result.skipped,
        "evaluation_seeds": {e.name: e.seed for e in result.evaluations},  # experiment keys, never deployed
        "aggregates": [{"model": m, "method": k} | v for (m, k), v in aggregates.items()],
        "overhead": {e.name: e.overhead for e in result.evaluations},
        "adaptive": {e.name: {"attackers": [{"method": m, "attacker": a} | v for (_, m, a), v in
                                            summarize(e.adaptive.records).items()],
                              "key_recovery": e.adaptive.key_recovery, "budgets": e.adaptive.budgets,
                              "curves": e.adaptive.curves}
                     for e in result.evaluations if e.adaptive},
    }
    written.append(_write(out / "results.json", json.dumps(payload, indent=2).encode()))
    written.append(_write(out / "report.md", _markdown(result, aggregates, title).encode()))
    return written


def _write(path: Path, data: bytes) -> Path:
    write_bytes_atomic(path, data)
    return path


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
    lines = [f"# {title}", ""]
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
                  f"Python {env['python']}, {env['cpu_threads']} CPU threads, CUDA: {env['cuda']}.",
              "Files: `results.json` (config, versions, aggregates), `per_image.csv`, "
              "`fig6_*.png`, `fig7_size.png`, `fig8_time.png`.", ""]
    return "\n".join(lines)


def _adaptive(result: EvaluationResult) -> list[str]:
    lines = []
    for e in result.evaluations:
        if not e.adaptive:
            continue
        summary = summarize(e.adaptive.records)
        methods = list(e.adaptive.key_recovery)
        budgets = e.adaptive.budgets
        lines += ["", f"## Adaptive attackers: {e.name}", "",
                  "Defense success (%) [Wilson 95 % interval] — the decrypted real top-1 on the attacked image equals the original clean "
                  "top-1 — and median ρ, per attacker. Lower is worse for the defense.", "",
                  "| Attacker | What it holds | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for attacker, held in ATTACKERS.items():
            held = held.format(**budgets)
            cells = [summary.get((e.name, m, attacker)) for m in methods]
            lines.append(f"| {attacker} | {held} | " + " | ".join(
                "—" if c is None else f"{c['defense_success_pct']:.1f} [{c['defense_success_pct_ci95'][0]:.0f}–"
                f"{c['defense_success_pct_ci95'][1]:.0f}] n={c['images']} (ρ {c['rho_median']:.5f})" for c in cells) + " |")
        lines += ["", "Key recovery from the served model file alone (chance = 50 %):", "",
                  "| Method | oracle that decided | real rows recovered (%) | time (s) |", "|---|---|---|---|"]
        for m, k in e.adaptive.key_recovery.items():
            lines.append(f"| {METHOD_NAMES[m]} | {k['oracle']} | {k['recovered_pct']:.1f} | {k['seconds']:.3f} |")
        lines += ["", f"Success-vs-budget curves: `fig_adaptive_{e.name.split(':')[0]}.png` (budgets are multiples of "
                      f"the median DeepFool ‖r‖₂ on the original model, {budgets['curve_base_l2']:.4f}).", ""]
    return lines


def _table2(result: EvaluationResult) -> list[str]:
    lines = ["", "## Table 2: fake classes without the key permutation", "",
             "Top-1 index among the 2N un-permuted outputs `[real 0..N-1, fake N..2N-1]` of the Fake Gradient "
             "model, grouped by the original model's class. Index N + c would mean the fake output mirrors "
             "the real class c.", ""]
    for e in result.evaluations:
        records = [r for r in e.records if r.method == "fake-gradient"]
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


def _figures(result: EvaluationResult, out: Path) -> list[Path]:
    written = []
    for e in result.evaluations:
        if {"fake-gradient", ORIGINAL} <= e.heatmaps.keys():
            path = out / f"fig6_{e.name.split(':')[0]}.png"
            figures.perturbation_heatmaps(path, e.heatmap_images, e.heatmaps["fake-gradient"],
                                          e.heatmaps[ORIGINAL], f"DeepFool perturbations, {e.name}")
            written.append(path)
    for e in result.evaluations:
        if e.adaptive:
            path = out / f"fig_adaptive_{e.name.split(':')[0]}.png"
            figures.budget_curves(path, e.adaptive.curves, {m: METHOD_NAMES[m] for m in e.adaptive.curves},
                                  f"Defense success vs L2 budget, {e.name}")
            written.append(path)
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
