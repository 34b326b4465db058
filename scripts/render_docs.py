"""Render the result tables of README.md, docs/*.md and reports/matrix_speed_*/report.md from reports/
(stdlib only, outside the wheel).

A rendered region is marked in the Markdown source:

    <!-- BEGIN table:NAME -->            (a block: the lines in between are the rendered table)
    <!-- END table:NAME -->
    text <!-- BEGIN value:NAME -->14 ms<!-- END value:NAME --> text   (inline, on one line)

    python scripts/render_docs.py            # rewrite every region from reports/
    python scripts/render_docs.py --check    # exit 1, naming each region that disagrees with reports/

No number in a region is typed by hand: each comes from ``reports/*/results.json`` or a CSV beside it, and
``tests/test_render_docs.py`` fails when the documents and the reports disagree.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import itertools
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path

from fakegradient.evaluation import intervals
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.paired import paired_test

ROOT = Path(__file__).resolve().parents[1]
MNV2 = "mobilenet_v2:IMAGENET1K_V1"
SCHEMES = {
    "original": "Original (baseline)",
    "fake-gradient": "Fake Gradient",
    "random-weight": "Random Weight",
    "fake-gradient-hardened": "Hardened (ours)",
    "device-head": "Device head (split)",
}
MODEL_NAMES = {
    MNV2: "MobileNetV2",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2",
}
ADAPTIVE = {
    MNV2: "adaptive",
    "efficientnet_lite0": "adaptive_efficientnet_lite0",
    "efficientnet_lite1": "adaptive_efficientnet_lite1",
    "efficientnet_lite2": "adaptive_efficientnet_lite2",
}
BLACKBOX = ("square", "hopskipjump")
QUERY_ONLY = ("query-only-square", "query-only-hopskipjump")  # the same attacks after a discovery from noise
VANISHING_MAX_ABS = 2.0 ** -75  # every |g_i| below it: each g_i² rounds to 0 in float32, so ‖g‖₂ = 0 (no L2 step)
# the paper's Table 1 for MobileNet (Feng et al., MM 2021): the only model it shares with our reports
PAPER_MOBILENET = {
    "fg_fake": 100.0,
    "fg_functionality": 100.0,
    "fg_defense": 87.1,
    "rw_fake": 0.0,
    "rw_defense": 0.0,
}

BLOCK = re.compile(r"^<!-- BEGIN (table:[\w.-]+) -->\n(.*?)^<!-- END \1 -->$", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"<!-- BEGIN (value:[\w.-]+) -->(.*?)<!-- END \1 -->")
ANY_BEGIN = re.compile(r"<!-- BEGIN ([^ ]+) -->")


class RenderError(Exception):
    """A region cannot be rendered or checked (unknown name, unterminated region, missing report)."""


# --- the reports, read once ---


class Reports:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str], object] = {}

    def json(self, folder: str, name: str = "results.json") -> dict:
        return self._load(folder, name, lambda path: json.loads(path.read_text()))

    def csv(self, folder: str, name: str) -> list[dict[str, str]]:
        return self._load(folder, name, lambda path: list(csv.DictReader(path.open(newline=""))))

    def jsonl(self, folder: str, name: str) -> list[dict]:
        """A ``--log`` of benchmarks/matrix_speed.py: its settings header, then one dict per run."""
        def read(path: Path) -> list[dict]:
            rows = []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RenderError(f"{path}: line {number} is not JSON (cut by a kill? rerun to complete "
                                      "it)") from None
            return rows

        return self._load(folder, name, read)

    def _load(self, folder: str, name: str, read: Callable[[Path], object]):
        key = (folder, name)
        if key not in self._cache:
            path = self.root / folder / name
            if not path.is_file():
                raise RenderError(f"{path} is missing")
            self._cache[key] = read(path)
        return self._cache[key]

    def aggregate(self, folder: str, model: str | None, method: str) -> dict:
        for entry in self.json(folder)["aggregates"]:
            if entry["method"] == method and (model is None or entry["model"] == model):
                return entry
        raise RenderError(f"reports/{folder}: no aggregate for {model} / {method}")

    def adaptive(self, folder: str) -> dict:
        (entry,) = self.json(folder)["adaptive"].values()
        return entry

    def cell(self, folder: str, method: str, attacker: str) -> dict | None:
        for row in self.adaptive(folder)["matrix"]:
            if row["method"] == method and row["attacker"] == attacker:
                return row
        return None


# --- formatting ---


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of k/n (:func:`fakegradient.evaluation.intervals.wilson`), in percent."""
    low, high = intervals.wilson(k, n)
    return 100 * low, 100 * high


def rate(k: int, n: int, pct: bool = False) -> str:
    """``21/23 [73–98]`` (``21/23 = 91 % [73–98]`` with pct)."""
    low, high = wilson(k, n)
    middle = f" = {100 * k / n:.0f} %" if pct else ""
    return f"{k}/{n}{middle} [{low:.0f}–{high:.0f}]"


def agg_rate(entry: dict, metric: str, pct: bool = False) -> str:
    return rate(entry[f"{metric}_k"], entry[f"{metric}_n"], pct)


def num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def queries(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model) or MODEL_NAMES.get(model.split(":")[0]) or model


def truthy(text: str) -> bool:
    return text.strip() == "True"


def finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def by_image(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, dict[str, str]]]:
    """(model, image) → method → the per-image row."""
    grouped: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        grouped[(row["model"], row["image"])][row["method"]] = row
    return grouped


# --- the attacker matrix (reports/adaptive*) ---


# key-recovery attackers whose cells say how much of the key they found
RECOVERY_SHOWN = ("key-recovery-file", "learned-rows", "blind") + QUERY_ONLY
CROSS_ENTROPY = ("pgd", "apgd")  # the rows that ascend the served top-1's cross-entropy (reports/masked_gradient)
STUDY_DEFAULTS = ("bias", "scale", "space", "limit")  # settings shaping the served outputs, at their defaults there


def step_vanishes(row: dict[str, str]) -> bool:
    """A ``masked_gradient/per_image.csv`` row whose L2 step vanishes: its gradient is 0, or below
    :data:`VANISHING_MAX_ABS` everywhere."""
    return float(row["gradient_max_abs"]) < VANISHING_MAX_ABS


def masked_defended(reports: Reports, folder: str, method: str, attacker: str) -> int | None:
    """Photos a cross-entropy row counts as defended whose input gradient on the served outputs is exactly 0 or
    below :data:`VANISHING_MAX_ABS` everywhere, so that the L2 step vanishes (``reports/masked_gradient``); None
    unless the matrix ran on that study's pipelines: the default bias, scale and space, its seed, the same photos."""
    if not (reports.root / "masked_gradient" / "per_image.csv").is_file():
        return None
    config, default = reports.json(folder).get("config", {}), {f.name: f.default for f in fields(EvaluationConfig)}
    if any(config.get(name) != default[name] for name in STUDY_DEFAULTS) or (
            config.get("seed") != reports.json("masked_gradient")["seed"]):
        return None
    zero = {(r["model"], r["method"], r["image"]): step_vanishes(r)
            for r in reports.csv("masked_gradient", "per_image.csv")}
    mine = [r for r in reports.csv(folder, "attackers_per_image.csv") if r["method"] == method]
    photos = {(r["model"], r["image"]) for r in mine}
    if not mine or photos != {(m, i) for m, k, i in zero if k == method and m == mine[0]["model"]}:
        return None  # other photos than the study's
    return sum(zero[r["model"], method, r["image"]] for r in mine
               if r["attacker"] == attacker and truthy(r["defense_success"]))


def matrix_cell(reports: Reports, folder: str, method: str, attacker: str) -> str:
    row = reports.cell(folder, method, attacker)
    if row is None:
        return "n/a"
    text = rate(row["k"], row["n"])
    extras = []
    recovery = reports.adaptive(folder)["key_recovery"].get(method, {}).get(attacker)
    if recovery and method not in ("original", "device-head") and attacker in RECOVERY_SHOWN:
        found = f"{recovery['recovered_pct']:.1f} % of real rows"
        if attacker in QUERY_ONLY and recovery.get("queries") is not None:
            found += f" from {recovery['queries']:,} noise queries"
        extras.append(found)
        if attacker == "key-recovery-file":
            extras.append(f"{1000 * recovery['seconds']:.0f} ms")
    if attacker in BLACKBOX + QUERY_ONLY and row.get("median_queries") is not None:
        extras.append(f"median {queries(row['median_queries'])} queries")
    if row.get("p_vs_original") is not None:  # reports made before the paired tests have none
        extras.append(f"p = {row['p_vs_original']:.2g}")
    if row.get("too_weak"):
        extras.append("too weak")
    if row.get("under_powered"):
        extras.append("under-powered")
    masked = masked_defended(reports, folder, method, attacker) if attacker in CROSS_ENTROPY else None
    if masked:
        extras.append(f"{masked} of them a zero or vanishing gradient: masked")
    return text + (f" ({', '.join(extras)})" if extras else "")


def curve_rate(reports: Reports, folder: str, attacker: str, method: str, factor: float) -> str:
    """The rate of ``attacker`` at ``factor`` × base from the report's budget curves (n: its matrix cell's)."""
    entry = reports.adaptive(folder)
    base = entry["budgets"]["base_l2"]
    n = reports.cell(folder, method, attacker)["n"]
    for budget, pct in entry["curves"][attacker][method]:
        if math.isclose(budget, factor * base, rel_tol=1e-6):
            return rate(round(pct * n / 100), n)
    raise RenderError(f"reports/{folder}: no {attacker} point at {factor}x base")


def render_matrix(reports: Reports, folder: str) -> str:
    entry = reports.adaptive(folder)
    methods = [m for m in SCHEMES if m in entry["key_recovery"] or m in entry["device_cost"]]
    rows = []
    for attacker, threat in entry["threat_models"].items():
        if all(reports.cell(folder, m, attacker) is None for m in methods):  # run on no image (name=0)
            continue
        label = f"{attacker}: {threat['holds']} — {threat['threat']}"
        rows.append([label] + [matrix_cell(reports, folder, m, attacker) for m in methods])
        if attacker == "feature-space":
            rows.append(
                [f"… the same at 4× base ({4 * entry['budgets']['base_l2']:.3f})"]
                + [curve_rate(reports, folder, attacker, m, 4.0) for m in methods]
            )
    privacy = entry["privacy"]
    rows.append(
        ["**privacy**: images whose real top-1 the cloud names (best key-recovery attacker)"]
        + [f"{rate(privacy[m]['k'], privacy[m]['n'])} ({privacy[m]['attacker']})" for m in methods]
    )
    cost = entry["device_cost"]
    rows.append(
        ["device keeps / numpy time per image (contended VM)"]
        + [
            f"{cost[m]['device_bytes'] / 1000:,.1f} kB / {1e6 * cost[m]['decrypt_s_median']:.1f} µs"
            for m in methods
        ]
    )
    return table(["Attacker: what it holds — threat model"] + [SCHEMES[m] for m in methods], rows)


def render_budgets(reports: Reports, folder: str) -> str:
    budgets = reports.adaptive(folder)["budgets"]
    return (
        f"Budgets (L2 in [0, 1] pixels): base = {budgets['base_l2']:.3f} (the unprotected model's median "
        f"DeepFool ‖r‖₂); white box ≤ 2× base = {budgets['whitebox_l2']:.3f}; black box ≤ 40× base = "
        f"{budgets['blackbox_l2']:.2f} and ≤ {budgets['blackbox_queries']:,.0f} queries per image."
    )


DECISION_ROWS = [  # (what the attacker does, report folder, attacker; None: a special row)
    ("DeepFool on the served outputs (the paper's threat)", "adaptive", "naive"),
    ("L2 PGD, 20 steps, on the served outputs", "adaptive", "pgd"),
    ("Square: score-based black box on the served outputs", "adaptive", "square"),
    ("Query-only: finds the real outputs from its own noise, then Square on them", "adaptive", "query-only-square"),
    ("Transfer: DeepFool on the public base model, then sent", "adaptive", "transfer"),
    ("Key recovery from the served model file alone", "adaptive", "key-recovery-file"),
    (
        "4 noise images through the service, matched to the public model",
        "adaptive",
        "known-plaintext-outputs",
    ),
    ("Feature space (no key needed), 4× base budget", "adaptive", "feature-space@4"),
]
DECISION_METHODS = ("original", "fake-gradient", "device-head")


def render_decision(reports: Reports) -> str:
    rows = []
    for label, folder, attacker in DECISION_ROWS:
        if attacker.endswith("@4"):
            cells = [curve_rate(reports, folder, attacker[:-2], m, 4.0) for m in DECISION_METHODS]
        else:  # n/a: the attacker does not apply (no served output is a class for the device head)
            found = [reports.cell(folder, m, attacker) for m in DECISION_METHODS]
            cells = ["n/a" if cell is None else rate(cell["k"], cell["n"]) for cell in found]
        rows.append([label] + cells)
    privacy = reports.adaptive("adaptive")["privacy"]
    rows.append(
        ["**Privacy**: images whose real class the cloud can name"]
        + [rate(privacy[m]["k"], privacy[m]["n"]) for m in DECISION_METHODS]
    )
    return table(
        ["Attacker (MobileNetV2, ImageNet photos)", "Unprotected", "Fake Gradient", "Device head"], rows
    )


def render_models(reports: Reports) -> str:
    """Fake Gradient's defense success on each model, against each attacker (unprotected in parentheses)."""
    attackers = dict.fromkeys(a for folder in ADAPTIVE.values() for a in reports.adaptive(folder)["threat_models"])
    rows = []
    for attacker in attackers:
        if all(reports.cell(folder, "fake-gradient", attacker) is None for folder in ADAPTIVE.values()):
            continue  # a row no model's matrix ran
        cells = []
        for folder in ADAPTIVE.values():
            fg, orig = (
                reports.cell(folder, "fake-gradient", attacker),
                reports.cell(folder, "original", attacker),
            )
            if fg is None:
                cells.append("n/a")
                continue
            weak = ", too weak" if fg.get("too_weak") else ""
            cells.append(f"{rate(fg['k'], fg['n'])} (unprotected {orig['k']}/{orig['n']}{weak})")
        rows.append([attacker] + cells)
    rows.append(
        ["feature-space at 4× base"]
        + [
            f"{curve_rate(reports, f, 'feature-space', 'fake-gradient', 4.0)} (unprotected "
            f"{curve_rate(reports, f, 'feature-space', 'original', 4.0).split(' ')[0]})"
            for f in ADAPTIVE.values()
        ]
    )
    return table(["Attacker"] + [f"{model_name(m)} (`reports/{f}/`)" for m, f in ADAPTIVE.items()], rows)


def blackbox_folders(reports: Reports) -> list[str]:
    return sorted(
        p.name
        for p in reports.root.iterdir()
        if p.name.startswith(("adaptive_blackbox_", "adaptive_hopskipjump_")) and p.is_dir()
    )


def render_blackbox_runs(reports: Reports) -> str:
    rows = []
    for folder in blackbox_folders(reports):
        model = reports.json(folder)["config"]["models"][0]
        for attacker in BLACKBOX:
            cells = {m: reports.cell(folder, m, attacker) for m in SCHEMES}
            if all(c is None or c["n"] == 0 for c in cells.values()):
                continue
            shown = [
                f"{rate(c['k'], c['n'])}, {queries(c['median_queries'])}"
                + (" (too weak)" if c["too_weak"] else "")
                if c
                else "not run"
                for c in cells.values()
            ]
            rows.append([f"`{folder}/`", model_name(model), attacker] + shown)
    return table(
        ["Report", "Model", "Attacker"] + [f"{name}: defended, median queries" for name in SCHEMES.values()],
        rows,
    )


def render_blackbox_losses(reports: Reports) -> str:
    """Every image a black-box attacker wins against Fake Gradient or the device head, with what the same attack
    needed on the other schemes (the same query count everywhere: the attack's first random step did it)."""
    rows = []
    folders = [f for f in ADAPTIVE.values()] + blackbox_folders(reports)
    seen = set()
    for folder in folders:
        per_image = reports.csv(folder, "attackers_per_image.csv")
        grouped: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
        for row in per_image:
            if row["attacker"] in BLACKBOX:
                grouped[(row["attacker"], row["image"])][row["method"]] = row
        for (attacker, image), methods in sorted(grouped.items()):
            lost = [
                m
                for m in ("fake-gradient", "device-head")
                if m in methods and not truthy(methods[m]["defense_success"])
            ]
            if not lost:
                continue
            model = per_image[0]["model"]
            key = (
                model,
                attacker,
                image,
                tuple((m, methods[m]["defense_success"], methods[m]["queries"]) for m in sorted(methods)),
            )
            if key in seen:  # the same image and run in two reports (a rerun at larger n)
                continue
            seen.add(key)
            cells = []
            for method in SCHEMES:
                row = methods.get(method)
                if row is None:
                    cells.append("not run")
                elif truthy(row["defense_success"]):
                    cells.append("defended")
                else:
                    cells.append(
                        f"lost after {queries(finite(row['queries']))} queries, ‖r‖₂ {float(row['l2']):.2f}"
                    )
            rows.append([f"`{folder}/`", attacker, f"`{image}`"] + cells)
    return table(["Report", "Attacker", "Photo"] + list(SCHEMES.values()), rows)


# --- Table 1 (reports/table1, reports/table1_official) ---


def mirror_count(reports: Reports, folder: str, model: str, n_classes: int = 1000) -> tuple[int, int]:
    """Photos whose winning (un-permuted) fake output is the mirror N + c of the real class c."""
    k = n = 0
    for (m, _), methods in by_image(reports.csv(folder, "per_image.csv")).items():
        if m != model or "fake-gradient" not in methods:
            continue
        row = methods["fake-gradient"]
        n += 1
        k += int(row["plain_top1"]) == n_classes + int(row["original_top1"])
    return k, n


def agrees(entry: dict, metric: str, paper: float) -> str:
    low, high = wilson(entry[f"{metric}_k"], entry[f"{metric}_n"])
    return f"paper {paper:g}: " + ("agrees" if low - 1e-9 <= paper <= high + 1e-9 else "**disagrees**")


def claims_rows(reports: Reports, folder: str, models: list[str]) -> list[list[str]]:
    get = lambda model, method: reports.aggregate(folder, model, method)

    def paper_note(model: str, key: str, entry: dict, metric: str) -> str:
        return f" ({agrees(entry, metric, PAPER_MOBILENET[key])})" if model == MNV2 else ""

    rows = [
        ["Fake Gradient: the served top-1 is a fake output for 100 %"]
        + [
            agg_rate(get(m, "fake-gradient"), "fake_output_pct")
            + paper_note(m, "fg_fake", get(m, "fake-gradient"), "fake_output_pct")
            for m in models
        ],
        ["Fake Gradient: decrypted top-1 = original for 100 %"]
        + [
            agg_rate(get(m, "fake-gradient"), "original_functionality_pct")
            + paper_note(m, "fg_functionality", get(m, "fake-gradient"), "original_functionality_pct")
            for m in models
        ],
        ["Fake Gradient: defense success 79.8–94.9 % (MobileNet 87.1)"]
        + [
            agg_rate(get(m, "fake-gradient"), "defense_success_pct")
            + paper_note(m, "fg_defense", get(m, "fake-gradient"), "defense_success_pct")
            for m in models
        ],
        ["Random Weight: fake output 0–6 % (MobileNet 0)"]
        + [
            agg_rate(get(m, "random-weight"), "fake_output_pct")
            + paper_note(m, "rw_fake", get(m, "random-weight"), "fake_output_pct")
            for m in models
        ],
        ["Random Weight: defense success 0–22.5 % (MobileNet 0)"]
        + [
            agg_rate(get(m, "random-weight"), "defense_success_pct")
            + paper_note(m, "rw_defense", get(m, "random-weight"), "defense_success_pct")
            for m in models
        ],
        ["the unprotected model: DeepFool always wins (sanity baseline: defense success)"]
        + [agg_rate(get(m, "original"), "defense_success_pct") for m in models],
        ['"Fake Gradient causes smaller perturbations": mean ρ, original → Fake Gradient, pixels']
        + [
            f"{get(m, 'original')['rho_mean']:.5f} → {get(m, 'fake-gradient')['rho_mean']:.5f}"
            for m in models
        ],
        ["the same, normalised tensor (paper, MobileNet: 0.0012 → 0.0012)"]
        + [
            f"{get(m, 'original')['rho_normalized_mean']:.5f} → {get(m, 'fake-gradient')['rho_normalized_mean']:.5f}"
            for m in models
        ],
        ["median per-image ‖r‖₂ Fake Gradient / original"]
        + [num(get(m, "fake-gradient")["l2_ratio_median"]) for m in models],
        ["Table 2: the winning fake output is the mirror N + c of the real class c"]
        + [rate(*mirror_count(reports, folder, m)) for m in models],
    ]
    return rows


def table1_models(reports: Reports, folder: str) -> list[str]:
    return list(dict.fromkeys(entry["model"] for entry in reports.json(folder)["aggregates"]))


def speed_logs(reports: Reports, folder: str) -> tuple[dict, list[str], dict[tuple[str, str], dict]]:
    """(the settings every log shares, its attackers' image limits merged, the attackers in their logs' order,
    (attacker, variant) → its round-1, one-thread run) of every ``reports/FOLDER/*.jsonl``
    (benchmarks/matrix_speed.py's ``--log``; a process per log, each with its own attackers and variants; the
    last run logged for a key wins)."""
    paths = sorted((reports.root / folder).glob("*.jsonl"))
    if not paths:
        raise RenderError(f"reports/{folder}: no matrix_speed log (*.jsonl)")
    shared, names, runs, limits = None, [], {}, {}
    for path in paths:
        header, *rows = reports.jsonl(folder, path.name)
        settings = {k: v for k, v in header.items() if k not in ("attackers", "variants", "limits")}
        own = header.get("limits", {})
        if (shared is not None and settings != shared) or any(limits.get(a, n) != n for a, n in own.items()):
            raise RenderError(f"reports/{folder}: {path.name} was run with other settings than {paths[0].name}")
        shared = settings
        limits.update(own)
        names += [name for name in header["attackers"] if name not in names]
        runs.update({(row["attacker"], row["variant"]): row for row in rows
                     if row["round"] == 0 and row["threads"] == 1})
    return {**shared, "limits": limits}, names, runs


def render_matrix_speed(reports: Reports, folder: str, base: str = "before", new: str = "after") -> str:
    """Per attacker: wall time of ``base`` and ``new`` (benchmarks/matrix_speed.py, one round, one thread each),
    their ratio, each one's roofline fraction, and whether their per-image decisions and queries agree."""
    _, order, runs = speed_logs(reports, folder)
    names = [name for name in order if (name, base) in runs and (name, new) in runs]
    if not names:
        raise RenderError(f"reports/{folder}: no attacker run in both {base} and {new}")
    rows = []
    for name in names:
        b, a = runs[(name, base)], runs[(name, new)]
        rows.append([name, f"{b['wall']:.1f}", f"{a['wall']:.1f}", f"{a['wall'] / b['wall']:.2f}",
                     f"{b['roof'] / b['wall']:.2f}", f"{a['roof'] / a['wall']:.2f}", speed_differences(b, a)])
    total_b, total_a = (sum(runs[(n, v)]["wall"] for n in names) for v in (base, new))
    rows.append([f"all run in both (sum of {len(names)})", f"{total_b:.1f}", f"{total_a:.1f}",
                 f"{total_a / total_b:.2f}", "", "", ""])
    return table(["attacker", f"wall s {base}", f"wall s {new}", f"{new} / {base}", f"roofline / wall {base}",
                  f"roofline / wall {new}", "same decisions and queries"], rows)


def speed_differences(base: dict, new: dict) -> str:
    """``yes`` where two runs' per-image decisions and query counts (scheme → a list, or None) all agree, else
    how many of each differ."""
    out = []
    for key, what in (("decisions", "decisions"), ("queries", "query counts")):
        pairs = [(x, y) for scheme in sorted(set(base[key]) | set(new[key]))
                 for x, y in _paired(base[key].get(scheme), new[key].get(scheme))]
        differ = sum(x != y for x, y in pairs)
        if differ:
            out.append(f"{differ} of {len(pairs)} {what}")
    return f"**no**: {', '.join(out)} differ" if out else "yes"


def _paired(base: list | None, new: list | None) -> list[tuple]:
    """Per image (base, new); an image one run lacks (a scheme missing, or a shorter list) pairs as a difference."""
    missing = object()
    return list(itertools.zip_longest(base or [], new or [], fillvalue=missing))


def regenerated_folder(spec: str) -> str:
    """Where a model's committed matrix (ADAPTIVE), rerun with both speed options, lies (its evaluate --out)."""
    return f"matrix_speed_{spec.split(':')[0]}_regenerated/run"


@functools.cache
def compare_matrices():
    """benchmarks/compare_matrices.py, whose sums and decision counts the regenerated-matrix table shows."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_matrices.py"
    spec = importlib.util.spec_from_file_location("compare_matrices", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decisions_differ(reports: Reports, old: str, new: str, name: str, key: tuple[str, ...]) -> str:
    """How many of the per-image decisions (``name``: a per-image CSV; rows keyed by ``key``) differ, and how
    many rows only one run has."""
    differ, both, alone = compare_matrices().differing(reports.csv(old, name), reports.csv(new, name), key)
    return f"{len(differ)} of {both}" + (f" ({alone} in one run only)" if alone else "")


def render_matrix_regenerated(reports: Reports) -> str:
    """Per model: the committed matrix's attacker time against its regeneration with both speed options
    (own seconds over the attackers both runs have) and how many per-image decisions differ; the total over the
    models regenerated."""
    own_seconds = compare_matrices().own_seconds
    rows, totals = [], [0.0, 0.0]
    for spec, committed in ADAPTIVE.items():
        before = own_seconds(reports.csv(committed, "attackers.csv"))
        if not (reports.root / regenerated_folder(spec) / "attackers.csv").is_file():
            rows.append([model_name(spec), f"{sum(before.values()) / 60:.0f}", "not regenerated", "", "", ""])
            continue
        after = own_seconds(reports.csv(regenerated_folder(spec), "attackers.csv"))
        common = before.keys() & after.keys()
        b, a = sum(before[n] for n in common), sum(after[n] for n in common)
        if not b:
            raise RenderError(f"reports/{committed}, reports/{regenerated_folder(spec)}: no attacker timed in both")
        totals = [totals[0] + b, totals[1] + a]
        rows.append([model_name(spec), f"{b / 60:.0f}", f"{a / 60:.0f}", f"{a / b:.2f}",
                     decisions_differ(reports, committed, regenerated_folder(spec), "attackers_per_image.csv",
                                      ("model", "method", "attacker", "image")),
                     decisions_differ(reports, committed, regenerated_folder(spec), "per_image.csv",
                                      ("model", "method", "image"))])
    if totals[0]:
        regenerated = sum(row[2] != "not regenerated" for row in rows)
        rows.append([f"models regenerated ({regenerated} of {len(rows)})", f"{totals[0] / 60:.0f}",
                     f"{totals[1] / 60:.0f}", f"{totals[1] / totals[0]:.2f}", "", ""])
    return table(["model", "committed own min", "regenerated own min", "ratio",
                  "matrix decisions that differ", "Table 1 decisions that differ"], rows)


def render_speed_budgets(reports: Reports, folder: str) -> str:
    """The budgets the matrix_speed logs ran at (their header: the committed run's, or DeepFool's on its photos)."""
    settings, _, _ = speed_logs(reports, folder)
    budgets = settings["budgets"]
    return (f"white-box L2 {budgets['whitebox_l2']:.3f}, black-box L2 {budgets['blackbox_l2']:.2f}, "
            f"{settings['queries']} queries")


def render_table1(reports: Reports, folder: str) -> str:
    models = table1_models(reports, folder)
    return table(
        ["Claim (paper, Table 1)"] + [model_name(m) for m in models], claims_rows(reports, folder, models)
    )


def table1_pairs(reports: Reports) -> list[tuple[str, str, float | None, bool]]:
    """(model, photo, Fake Gradient's per-image ‖r‖₂ ratio to the original, defended) of reports/table1."""
    out = []
    for (model, image), methods in by_image(reports.csv("table1", "per_image.csv")).items():
        row = methods["fake-gradient"]
        out.append((model, image, finite(row["l2_ratio_to_original"]), truthy(row["defense_success"])))
    return out


def render_table1_losses(reports: Reports) -> str:
    rows = []
    pairs = table1_pairs(reports)
    for model in dict.fromkeys(p[0] for p in pairs):
        mine = [p for p in pairs if p[0] == model]
        lost = [f"`{image}` {num(ratio)}" for _, image, ratio, defended in mine if not defended]
        above = [p for p in mine if p[2] is not None and p[2] > 1]
        rows.append(
            [
                model_name(model),
                ", ".join(lost) or "none",
                f"{len(above)} of {len(mine)} ({sum(not p[3] for p in above)} lost)",
            ]
        )
    return table(
        ["Model", "photos Fake Gradient loses (per-image ratio)", "photos with a ratio above 1"], rows
    )


def value_ratio_above_one(reports: Reports) -> str:
    pairs = table1_pairs(reports)
    lost = [p for p in pairs if not p[3]]
    above = [p for p in pairs if p[2] is not None and p[2] > 1]
    return (
        f"{sum(p[2] is not None and p[2] > 1 for p in lost)} of the {len(lost)} losses have a ratio above 1; "
        f"{len(above)} of the {len(pairs)} (model, photo) pairs have one, {sum(not p[3] for p in above)} of "
        "them lost"
    )


def value_mnist_ratio_at_most_one(reports: Reports) -> str:
    lost = [
        finite(r["l2_ratio_to_original"])
        for r in reports.csv("seven_mnist", "per_image.csv")
        if r["method"] == "fake-gradient" and not truthy(r["defense_success"])
    ]
    return f"{sum(v is not None and v <= 1 for v in lost)} of the {len(lost)} lost digits have a ratio ≤ 1"


def value_photos(reports: Reports) -> str:
    data = reports.json("table1")["data"]
    return f"n = {data['distinct_photos']} distinct photos ({data['labelled']} labelled): " + "; ".join(
        data["sources"]
    )


# --- controls and ablations ---


def render_controls(reports: Reports) -> str:
    """Every model of reports/controls: per method its rates, and where the report has them the paired tests of
    defense success (against the original; a control also against Fake Gradient)."""
    entry = reports.json("controls")
    tests = defaultdict(list)
    for t in entry.get("paired", {}).get("defense_success", []):
        verdict = "" if t["p"] < 0.05 else ", not significant"
        tests[t["model"], t["a"]].append(f"vs {t['b']}: {t['only_a']}/{t['only_b']}, p = {t['p']:.2g}{verdict}")
    rows = [
        [
            model_name(a["model"]),
            a["method"],
            agg_rate(a, "fake_output_pct", pct=True),
            agg_rate(a, "defense_success_pct", pct=True),
            "; ".join(tests[a["model"], a["method"]]) or "—",
            num(a["l2_ratio_median"]),
            f"{a['rho_median']:.5f}",
        ]
        for a in entry["aggregates"]
    ]
    return table(
        [
            "Model (`reports/controls/`)",
            "Method",
            "served top-1 is a fake output",
            "defense success",
            "paired: defended here only / there only, exact McNemar p",
            "median per-image ‖r‖₂ ratio to the original",
            "median ρ (pixels)",
        ],
        rows,
    )


def render_ablations(reports: Reports) -> str:
    rows_in = reports.csv("ablations", "ablations.csv")
    methods = list(dict.fromkeys(r["method"] for r in rows_in))
    settings: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows_in:
        settings[row["setting"]][row["method"]] = row
    rows = []
    for by_method in settings.values():
        first = next(iter(by_method.values()))
        scale = next((r["scale"] for r in by_method.values() if r["scale"]), "")
        fg = by_method.get("fake-gradient")
        rows.append(
            [scale, first["candidates"], first["clip"]]
            + [
                f"{by_method[m]['defense_success_pct_k']}/{by_method[m]['images']}" if m in by_method else "—"
                for m in methods
            ]
            + [f"{float(fg['rho_median']):.5f}" if fg else "—"]
        )
    return table(
        ["S_a", "DeepFool candidates", "clip"]
        + [f"{m}: defended" for m in methods]
        + ["Fake Gradient: median ρ"],
        rows,
    )


# --- MNIST (reports/seven_mnist, reports/mnist) ---


def csv_rate(rows: list[dict[str, str]], model: str, method: str) -> tuple[int, int, float | None]:
    mine = [r for r in rows if r["model"] == model and r["method"] == method]
    ratios = [v for r in mine if (v := finite(r["l2_ratio_to_original"])) is not None]
    return (
        sum(truthy(r["defense_success"]) for r in mine),
        len(mine),
        statistics.median(ratios) if ratios else None,
    )


def landing(rows: list[dict[str, str]], model: str) -> tuple[int, int]:
    """Lost digits whose real top-1 after the attack is where the attack on the unprotected model lands."""
    k = n = 0
    for (m, _), methods in by_image(rows).items():
        fg = methods.get("fake-gradient")
        if m != model or fg is None or truthy(fg["defense_success"]):
            continue
        n += 1
        k += fg["adversarial_top1"] == methods["original"]["adversarial_top1"]
    return k, n


def render_seven_mnist(reports: Reports) -> str:
    rows_in = reports.csv("seven_mnist", "per_image.csv")
    training = reports.json("seven_mnist", "seven_mnist.json")["training"]
    rows = []
    for model, trained in training.items():
        k, n, ratio = csv_rate(rows_in, model, "fake-gradient")
        correct = round(trained["test_accuracy"] * 1000)
        rows.append(
            [
                model,
                rate(correct, 1000, pct=True),
                rate(k, n, pct=True),
                num(ratio),
                rate(*landing(rows_in, model), pct=True),
            ]
        )
    return table(
        [
            "Architecture",
            "held-out accuracy",
            "Fake Gradient: defense success",
            "ratio",
            "lost digits whose real top-1 lands where the unprotected attack's does",
        ],
        rows,
    )


def recipe_runs(reports: Reports) -> list[tuple[str, dict, list[dict[str, str]]]]:
    base = reports.root / "mnist" / "recipes"
    runs = []
    for folder in sorted(p for p in base.iterdir() if (p / "run.json").is_file()):
        name = f"mnist/recipes/{folder.name}"
        runs.append((folder.name, reports.json(name, "run.json"), reports.csv(name, "per_image.csv")))
    return runs


def render_mnist_recipes(reports: Reports) -> str:
    rows = []
    for _, run, per_image in recipe_runs(reports):
        k, n, ratio = csv_rate(per_image, run["arch"], "fake-gradient")
        rows.append(
            [
                run["arch"],
                f"{run['size']}×{run['size']}",
                f"`{run['recipe']}`",
                rate(run["held_out_correct"], run["held_out"], pct=True),
                rate(k, n, pct=True),
                num(ratio),
                rate(*mirror_from(per_image, run["arch"], 10), pct=True),
            ]
        )
    return table(
        [
            "Architecture",
            "input",
            "recipe",
            "held-out accuracy",
            "Fake Gradient: defense success",
            "ratio",
            "Table 2: the mirror fake output wins",
        ],
        rows,
    )


def mirror_from(rows: list[dict[str, str]], model: str, n_classes: int) -> tuple[int, int]:
    mine = [r for r in rows if r["model"] == model and r["method"] == "fake-gradient"]
    return sum(int(r["plain_top1"]) == n_classes + int(r["original_top1"]) for r in mine), len(mine)


def value_mnist_ratio_range(reports: Reports) -> str:
    ratios = [
        csv_rate(per_image, run["arch"], "fake-gradient")[2] for _, run, per_image in recipe_runs(reports)
    ]
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def value_mnist_mirror(reports: Reports) -> str:
    rows_in = reports.csv("seven_mnist", "per_image.csv")
    counts = {
        m: mirror_from(rows_in, m, 10) for m in reports.json("seven_mnist", "seven_mnist.json")["training"]
    }
    low, high = min(counts, key=lambda m: counts[m][0]), max(counts, key=lambda m: counts[m][0])
    recipes = [mirror_from(per_image, run["arch"], 10)[0] for _, run, per_image in recipe_runs(reports)]
    return (
        f"{rate(*counts[low], pct=True)} ({low}) to {rate(*counts[high], pct=True)} ({high}) of the attacked "
        f"digits, and {min(recipes)}–{max(recipes)} of 500 in each of the {len(recipes)} models retrained on CPU"
    )


def render_mnist_classes(reports: Reports) -> str:
    base = reports.root / "mnist" / "classes"
    rows = []
    for folder in sorted(
        (p for p in base.iterdir() if (p / "run.json").is_file()),
        key=lambda p: (-json.loads((p / "run.json").read_text())["k"], p.name),
    ):
        name = f"mnist/classes/{folder.name}"
        run, per_image = reports.json(name, "run.json"), reports.csv(name, "per_image.csv")
        model = per_image[0]["model"]
        k, n, ratio = csv_rate(per_image, model, "fake-gradient")
        rows.append(
            [
                str(run["k"]),
                run["selection"],
                rate(k, n, pct=True),
                num(ratio),
                rate(*mirror_from(per_image, model, run["k"]), pct=True),
            ]
        )
    return table(
        [
            "classes k (ImageNet MobileNetV2, 23 photos)",
            "which",
            "Fake Gradient: defense success",
            "ratio",
            "Table 2: the mirror fake output wins",
        ],
        rows,
    )


def render_mnist_direction(reports: Reports) -> str:
    rows_in = reports.csv("mnist/direction", "per_image.csv")
    rows = []
    for model in dict.fromkeys(r["model"] for r in rows_in):
        mine = [r for r in rows_in if r["model"] == model]
        cos = sorted(float(r["cos"]) for r in mine)
        q1, _, q3 = statistics.quantiles(cos, n=4)  # as scripts/mnist_direction.py
        q2 = statistics.median(cos)
        ratios = [v for r in mine if (v := finite(r["l2_ratio"])) is not None]
        rows.append(
            [
                model,
                f"{q2:.2f} ({q1:.2f}–{q3:.2f})",
                num(statistics.median(ratios)),
                rate(sum(truthy(r["defense_success"]) for r in mine), len(mine), pct=True),
            ]
        )
    return table(["Model", "median cosine (IQR)", "ratio", "Fake Gradient: defense success"], rows)


def value_keyrec_ms(reports: Reports) -> str:
    seconds = reports.adaptive("adaptive")["key_recovery"]["fake-gradient"]["key-recovery-file"]["seconds"]
    return f"{1000 * seconds:.0f} ms"


def value_matrix_photos(reports: Reports) -> str:
    return f"{reports.cell('adaptive', 'original', 'naive')['n']} photos"


def value_matrix_cost(reports: Reports) -> str:
    """Each model's matrix: its photos and its computation (every row's own time, shared work once)."""
    parts = []
    for spec, folder in ADAPTIVE.items():
        entry = reports.adaptive(folder)
        n = reports.cell(folder, "original", "naive")["n"]
        seconds = entry.get("distinct_seconds")
        cost = f"{seconds / 60:.0f} min of computation" if seconds else "run before per-row timing"
        parts.append(f"{MODEL_NAMES[spec]} n = {n}, {cost}")
    return "; ".join(parts)


def value_key_size(reports: Reports) -> str:
    return f"{reports.adaptive('adaptive')['device_cost']['fake-gradient']['device_bytes'] / 1000:.0f} kB"


def value_noise_positions(reports: Reports) -> str:
    entry = reports.adaptive("adaptive")["key_recovery"]["fake-gradient"]["known-plaintext-outputs"]
    return f"{entry['queries']} noise images name {entry['recovered_pct']:.0f} % of the real positions"


def value_masked_gradient(reports: Reports) -> str:
    """Per model, Fake Gradient's photos whose PGD/APGD loss has an input gradient of exactly zero
    (``reports/masked_gradient``)."""
    summary = reports.json("masked_gradient")["summary"]
    return ", ".join(f"{by['fake-gradient']['zero_k']}/{by['fake-gradient']['n']} {model_name(model)}"
                     for model, by in summary.items()) + " photos"


def value_masked_vanishing(reports: Reports) -> str:
    """Per model, Fake Gradient's photos whose input gradient is not zero but below 2^-75 everywhere: the L2 norm
    PGD and APGD divide their step by underflows to 0 in float32 and the step vanishes all the same."""
    rows = reports.csv("masked_gradient", "per_image.csv")
    counts: dict[str, int] = {}
    leads = []
    for row in rows:
        if row["method"] == "fake-gradient":
            tiny = step_vanishes(row) and not truthy(row["gradient_zero"])
            counts[row["model"]] = counts.get(row["model"], 0) + tiny
            leads += [float(row["lead"])] * tiny
    span = f" (a served top-1 lead of {min(leads):.0f}–{max(leads):.0f} logits)" if leads else ""
    return ", ".join(f"{k} {model_name(model)}" for model, k in counts.items()) + " photos" + span


def value_masked_dlr(reports: Reports) -> str:
    """Per model, Fake Gradient's photos defended against APGD with the difference-of-logits ratio, against the
    cross-entropy and against the original with that loss (p: exact McNemar on the same photos), and on how many
    of them the attack moved the served top-1 all the same (``reports/masked_gradient``'s APGD)."""
    parts = []
    for model, entry in reports.json("masked_gradient")["apgd"].items():
        cells, tests = entry["cells"], {(t["a"], t["b"]): t["p"] for t in entry["paired"]}
        dlr, ce = cells["fake-gradient/difference_logits_ratio"], cells["fake-gradient/cross_entropy"]
        base = cells["original/difference_logits_ratio"]
        vs_ce = tests["fake-gradient/cross_entropy", "fake-gradient/difference_logits_ratio"]
        vs_base = tests["fake-gradient/difference_logits_ratio", "original/difference_logits_ratio"]
        parts.append(f"{model_name(model)} {dlr['k']}/{dlr['n']} (cross-entropy {ce['k']}/{ce['n']}, p = {vs_ce:.2g}; "
                     f"the original {base['k']}/{base['n']}, p = {vs_base:.2g}; the served top-1 moved on "
                     f"{dlr['defended_served_moved']} of the {dlr['k']})")
    return "; ".join(parts)


def value_masked_dlr_short(reports: Reports) -> str:
    """Fake Gradient's and the original's photos defended against APGD with the difference-of-logits ratio,
    per model (``reports/masked_gradient``)."""
    apgd = reports.json("masked_gradient")["apgd"]
    def counts(method: str) -> str:
        return ", ".join(f"{c['k']}/{c['n']}" for c in
                         (entry["cells"][f"{method}/difference_logits_ratio"] for entry in apgd.values()))
    worst = max(t["p"] for entry in apgd.values() for t in entry["paired"]
                if (t["a"], t["b"]) == ("fake-gradient/difference_logits_ratio", "original/difference_logits_ratio"))
    return (f"{counts('fake-gradient')} photos ({', '.join(model_name(m) for m in apgd)}; the unprotected model "
            f"{counts('original')}, paired p ≤ {worst:.2g})")


def value_labelled(reports: Reports) -> str:
    entry = reports.aggregate("mobilenet_v2", None, "fake-gradient")
    return f"{agg_rate(entry, 'defense_success_pct')}"


def value_rho_fall(reports: Reports) -> str:
    falls = []
    for model in table1_models(reports, "table1"):
        orig, fg = (
            reports.aggregate("table1", model, "original"),
            reports.aggregate("table1", model, "fake-gradient"),
        )
        falls += [100 * (1 - fg[key] / orig[key]) for key in ("rho_mean", "rho_normalized_mean")]
    return f"{min(falls):.0f}–{max(falls):.0f} %"


def value_mnist_defended_lost(reports: Reports) -> str:
    rows_in = reports.csv("seven_mnist", "per_image.csv")
    medians: dict[bool, list[float]] = {True: [], False: []}
    for model in reports.json("seven_mnist", "seven_mnist.json")["training"]:
        for defended in (True, False):
            ratios = [
                v
                for r in rows_in
                if r["model"] == model
                and r["method"] == "fake-gradient"
                and truthy(r["defense_success"]) == defended
                and (v := finite(r["l2_ratio_to_original"]))
            ]
            medians[defended].append(statistics.median(ratios))
    return (
        f"{min(medians[True]):.2f}–{max(medians[True]):.2f} among defended digits, "
        f"{min(medians[False]):.2f}–{max(medians[False]):.2f} among lost ones, per model"
    )


# --- file-only attackers (reports/file_only, studies.file_only) ---


def render_file_only(reports: Reports) -> str:
    entry = reports.json("file_only")
    rows = []
    for scheme, cells in entry["recovery"].items():
        if not cells["learned-rows"]["applies"]:
            rows.append([f"`{scheme}`", "—", "—", "—", "nothing to recover: no served row is a class"])
            continue

        def pct(attacker: str) -> str:
            c = cells[attacker]
            if not c["applies"]:
                return "—"
            low, high = c["ci95_pct"]
            return f"{c['pct']:.1f} % [{low:.1f}–{high:.1f}]"

        rows.append([f"`{scheme}`", pct("chance"), pct("key-recovery-file"), pct("learned-rows"),
                     entry["verdict"][scheme].replace("**", "")])
    return (table(["scheme", "chance", "fixed oracles (equal bias, sign pattern, row norm)",
                   "learned row classifier, leave one model out", "verdict"], rows)
            + f"\n\nReal rows among the N an attacker names from the served head alone, pooled over "
            f"{', '.join(model_name(m) for m in entry['models'])} × {entry['keys']} keys (95 % Wilson interval, "
            f"rows treated as independent). `{entry['command']}` ({entry['seconds']:.0f} s).")


# --- serving (reports/serving/*.json, written by benchmarks/serving.py --out) ---


def spread(values: list[float]) -> str:
    """``0.78 [0.72–0.81]``: the median and range of per-round ratios."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """A distribution-free 95 % interval of the median: the order statistics x(k), x(n+1-k) with the largest k
    whose binomial tail P(Bin(n, 1/2) < k) is at most 2.5 % (coverage ≥ 95 %); None below n = 6."""
    ordered, n = sorted(values), len(values)
    tail, k = 0.0, 0
    while tail + math.comb(n, k) / 2**n <= 0.025:
        tail += math.comb(n, k) / 2**n
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k >= 1 else None


def serving_source(entry: dict) -> str:
    machine = entry["machine"]
    return (f"`{entry['command']}`, {machine['cpu']}, {machine['cores']} cores, load average "
            f"{machine['load_average_after'][1]:.1f} after the run (5 min), {entry['date']}")


def render_serving_throughput(reports: Reports) -> str:
    entry = reports.json("serving", "throughput.json")
    rows = [
        [
            row["setting"],
            row["transport"],
            row["model"],
            f"{row['images_per_s']:.0f}",
            spread(row["served_over_in_process"]),
            spread(row["cpu_in_process_over_served"]),
            str(len(row["served_over_in_process"])),
            f"{row['p50_ms']:.0f} / {row['p99_ms']:.0f}",
        ]
        for row in entry["served"]
    ]
    header = ["server", "transport", "model", "images/s (median)", "served / in-process wall",
              "in-process / server CPU per image", "rounds", "p50 / p99 ms"]
    limits = "; ".join(f"{name} {max(v for k, v in sweep.items() if k != 'limit'):.0f} images/s ({sweep['limit']})"
                       for name, sweep in entry["in_process_images_per_s"].items())
    return (table(header, rows) + f"\n\nIn-process limit (best batch size x runs at once): {limits}; "
            f"{entry['threads_per_run']} ONNX Runtime thread(s) per run. Measured: {serving_source(entry)}.")


def render_serving_overhead(reports: Reports, name: str = "overhead.json") -> str:
    entry = reports.json("serving", name)
    rates = {(r["transport"], r["server"]): r["rounds"] for r in entry["images_per_s"]}
    cpu = {(r["transport"], r["server"]): r["rounds"] for r in entry.get("server_cpu_seconds_per_image", [])}
    rows = []
    for (transport, server), own in rates.items():
        if server == "off":
            rows.append([transport, server, f"{statistics.median(own):.0f}", "—", str(len(own)), "—"]
                        + (["—"] if cpu else []))
            continue
        ratios = [a / b for a, b in zip(own, rates[transport, "off"])]
        cost, interval = f"{100 * (1 - statistics.median(ratios)):.1f} %", median_interval(ratios)
        if interval is not None:
            cost += f" [{100 * (1 - interval[1]):.1f} to {100 * (1 - interval[0]):.1f}]"
        row = [transport, server, f"{statistics.median(own):.0f}", spread(ratios), str(len(ratios)), cost]
        if cpu:
            row.append(spread([a / b for a, b in zip(cpu[transport, server], cpu[transport, "off"])]))
        rows.append(row)
    header = ["transport", "server", "images/s (median)", "/ metrics off, per round", "rounds",
              "median cost [95 % interval]"]
    header += ["server CPU per image / metrics off"] if cpu else []
    return table(header, rows) + f"\n\nMeasured: {serving_source(entry)}."


def value_recording_cost(reports: Reports) -> str:
    """The access log's own work per request (reports/serving/recording_cost.json) as a share of the server's
    CPU per image with metrics off (reports/serving/overhead_grpc_direct.json: the same code, quiet, one run)."""
    cost = reports.json("serving", "recording_cost.json")
    overhead = reports.json("serving", "overhead_grpc_direct.json")
    off = statistics.median(c for r in overhead["server_cpu_seconds_per_image"] if r["server"] == "off"
                            for c in r["rounds"])
    log = (cost["log_us"] + cost["writer_us"]) * 1e-6
    return (f"{cost['log_us']:.0f} µs per request on the event loop and {cost['writer_us']:.0f} µs per line in its "
            f"writer thread (`{cost['command']}`, median of {cost['repeats']} × {cost['calls']} calls), "
            f"{100 * log / off:.2f} % of the {1e3 * off:.1f} ms of server CPU per image")


def private_leak(entry: dict) -> str:
    leak = entry["leak"]
    top = max(leak["readout_curve"], key=int)
    enough = leak["labelled_for_90pct"]
    text = (
        f"the cloud names the real class of {rate(leak['readout_curve'][top], leak['n'])} images after {top} "
        f"labelled queries (≥ 90 % from {enough if enough else '> ' + top})"
    )
    if leak["noise_found"] is not None:
        text += f"; {leak['noise_found']}/10 real rows from {leak['noise_queries']} noise queries"
    return text


def value_private_readout(reports: Reports, scheme: str = "device-head", labelled: str = "200") -> str:
    """What a read-out learnt from ``labelled`` labelled queries names on the private model under ``scheme``."""
    leak = reports.json("private")["privacy"][scheme]
    return (f"{labelled} labelled queries still names the real class of "
            f"{rate(leak['readout_curve'][labelled], leak['n'], pct=True)} images")


# the private studies' folders under reports/, and how each owner made its model
PRIVATE_OWNERS = {
    "private": "trained from scratch",
    "private_head": "fine-tuned public model, head only",
    "private_block": "fine-tuned public model, last block + head",
}


def render_private_decision(reports: Reports, folder: str = "private") -> str:
    """Per threat model on the private model: the scheme to use, its defense against the strongest admitted attack,
    the unprotected model's, the paired p, the device's cost and what still leaks (reports/<folder>/results.json)."""
    data = reports.json(folder)
    rows = []
    for entry in data["decision"]:
        pick, base = entry["defended"], entry["original"]
        use = f"`{entry['use']}`" if entry["significant"] else f"none better (best: `{entry['use']}`)"
        p = f"p = {pick['p']:.2g}" if "p" in pick else "—"
        rows.append(
            [
                f"**{entry['threat']}**: {entry['holds']}",
                use,
                f"{rate(pick['k'], pick['n'])} ({data['labels'][pick['attack']]})",
                rate(base["k"], base["n"]),
                p,
                f"{entry['secret_bytes']} B, {entry['decrypt_us_per_image']:.1f} µs",
                private_leak(entry),
            ]
        )
    return table(
        [
            f"Threat model (private MNIST CNN, {PRIVATE_OWNERS[folder]}, n = {data['n']})",
            "Use",
            "Defended vs its strongest attack",
            "Unprotected",
            "vs unprotected",
            "Device: secret, decrypt/image",
            "Still leaks",
        ],
        rows,
    )


def value_private_minutes(reports: Reports) -> str:
    return f"{round(reports.json('private', 'run.json')['seconds'] / 60)} min"


def value_private_blackbox(reports: Reports) -> str:
    """The private study's black-box rows on the original and Fake Gradient, naive and query-only."""
    run, matrix = reports.json("private", "run.json"), reports.json("private")["matrix"]

    def cell(scheme: str, attack: str) -> str:
        return rate(matrix[scheme][attack]["k"], matrix[scheme][attack]["n"])

    same = all(matrix["fake-gradient"][f"qo_{a}"]["only_original"] == matrix["fake-gradient"][f"qo_{a}"][
        "only_scheme"] == 0 for a in ("square", "hopskipjump"))  # paired: no image differs
    after = (f"{cell('fake-gradient', 'qo_square')} and {cell('fake-gradient', 'qo_hopskipjump')}"
             + (", image for image the unprotected model's," if same else ""))
    return (f"Square ({run['square_queries']:,} queries per image) and HopSkipJump ({run['hsj_queries']:,}) leave "
            f"{cell('original', 'square')} and {cell('original', 'hopskipjump')} of the unprotected model's answers "
            f"intact (their sanity baselines), {cell('fake-gradient', 'square')} and "
            f"{cell('fake-gradient', 'hopskipjump')} of Fake Gradient's when they attack its served top-1, and "
            f"{after} once the query-only attacker has found the real rows from its own noise")


def render_private_owners(reports: Reports) -> str:
    """Per threat model, the scheme to use for each way the owner made its model, its defense against the strongest
    admitted attack beside the unprotected model's, and the paired p (reports/private*/results.json)."""
    decisions = {folder: reports.json(folder)["decision"] for folder in PRIVATE_OWNERS}
    rows = []
    for i, entry in enumerate(decisions["private"]):
        cells = [f"**{entry['threat']}**"]
        for folder, decision in decisions.items():
            pick = decision[i]
            if pick["threat"] != entry["threat"]:
                raise RenderError(f"reports/{folder}/results.json: threat {i} is {pick['threat']!r}, not "
                                  f"{entry['threat']!r}")
            use = f"`{pick['use']}`" if pick["significant"] else "none better"
            p = f", p = {pick['defended']['p']:.2g}" if "p" in pick["defended"] else ""
            cells.append(f"{use}: {rate(pick['defended']['k'], pick['defended']['n'])} vs "
                         f"{rate(pick['original']['k'], pick['original']['n'])}{p}")
        rows.append(cells)
    header = ["Threat model"] + [f"{how} (n = {reports.json(folder)['n']})" for folder, how in PRIVATE_OWNERS.items()]
    return table(header, rows)


def value_private_transfer_owners(reports: Reports) -> str:
    """The transfer attacker against each owner (original row of reports/private*/per_image.csv), each fine-tuned
    owner paired with the from-scratch one on the same evaluation images (exact McNemar)."""
    defended = {folder: {row["image"]: truthy(row["transfer_defended"])
                         for row in reports.csv(folder, "per_image.csv") if row["scheme"] == "original"}
                for folder in PRIVATE_OWNERS}
    scratch, *tuned = PRIVATE_OWNERS

    def intact(folder: str) -> str:
        return rate(sum(defended[folder].values()), len(defended[folder]))

    tests = [paired_test(defended[folder], defended[scratch]) for folder in tuned]
    if any(test is None or test.pairs != len(defended[scratch]) for test in tests):
        raise RenderError("reports/private*/per_image.csv: the private studies do not share their evaluation images")
    return (f"leaves {intact(scratch)} of the from-scratch owner's answers intact, {intact(tuned[0])} of the "
            f"head-only owner's and {intact(tuned[1])} of the last-block owner's (paired on the same images, exact "
            f"McNemar against the from-scratch owner: p = {tests[0].p:.2g} and p = {tests[1].p:.2g})")


# (claim, (scheme, attack), (scheme, attack)): the scheme comparisons the private-model prose makes
PRIVATE_PAIRS = (
    ("against APGD on the served outputs", ("fake-gradient", "apgd"), ("device-head", "apgd")),
    ("against APGD, for the holder of the served file", ("device-head", "apgd"), ("mixing", "apgd")),
    ("against the query-only attacker with Square", ("device-head", "square"), ("decoys", "qo_square")),
    ("with HopSkipJump", ("device-head", "hopskipjump"), ("decoys", "qo_hopskipjump")),
)


def value_private_pairs(reports: Reports, folder: str = "private") -> str:
    """The schemes the private-model prose compares, paired on the same images (reports/<folder>/per_image.csv):
    defended k/n each, exact McNemar p, and "not significant" where p ≥ 0.05."""
    rows = reports.csv(folder, "per_image.csv")

    def defended(scheme: str, attack: str) -> dict[str, bool]:
        return {row["image"]: truthy(row[f"{attack}_defended"]) for row in rows
                if row["scheme"] == scheme and row[f"{attack}_defended"] != ""}

    parts = []
    for claim, (a, attack_a), (b, attack_b) in PRIVATE_PAIRS:
        first, second = defended(a, attack_a), defended(b, attack_b)
        test = paired_test(first, second)
        if test is None:
            raise RenderError(f"reports/{folder}/per_image.csv: {a} and {b} share no image {claim}")
        verdict = "" if test.p < 0.05 else f", not significant at n = {test.pairs}"
        parts.append(f"{claim} `{a}` {rate(sum(first.values()), len(first))} vs `{b}` "
                     f"{rate(sum(second.values()), len(second))}, p = {test.p:.2g}{verdict}")
    return "paired on the same images (exact McNemar): " + "; ".join(parts)


def render_private_threats(reports: Reports, folder: str = "private") -> str:
    """Every scheme against the strongest attack of each threat model (reports/<folder>/results.json)."""
    data = reports.json(folder)
    names = list(data["matrix"])
    rows = []
    for name in names:
        cells = [name]
        for entry in data["decision"]:
            worst = entry["strongest"].get(name)
            cells.append(
                "—" if worst is None else f"{rate(worst['k'], worst['n'])} ({data['labels'][worst['attack']]})"
            )
        rows.append(cells)
    return table(["Scheme"] + [entry["threat"] for entry in data["decision"]], rows)


SPEED_MODELS = ("mobilenet_v2", "efficientnet_lite0")  # the models with ONNX Runtime speed reports

RENDERERS: dict[str, Callable[[Reports], str]] = {
    "table:decision": render_decision,
    "table:matrix-mobilenet_v2": lambda r: render_matrix(r, "adaptive"),
    "table:matrix-mobilenet_v2-official": lambda r: render_matrix(r, "adaptive_official"),
    "table:matrix-efficientnet_lite0": lambda r: render_matrix(r, "adaptive_efficientnet_lite0"),
    "table:matrix-efficientnet_lite1": lambda r: render_matrix(r, "adaptive_efficientnet_lite1"),
    "table:matrix-efficientnet_lite2": lambda r: render_matrix(r, "adaptive_efficientnet_lite2"),
    "value:budgets-mobilenet_v2": lambda r: render_budgets(r, "adaptive"),
    "value:budgets-mobilenet_v2-official": lambda r: render_budgets(r, "adaptive_official"),
    "table:fake-gradient-by-model": render_models,
    "table:blackbox-runs": render_blackbox_runs,
    "table:blackbox-losses": render_blackbox_losses,
    "table:matrix-speed-mobilenet_v2": lambda r: render_matrix_speed(r, "matrix_speed_mobilenet_v2"),
    "value:matrix-speed-budgets-mobilenet_v2": lambda r: render_speed_budgets(r, "matrix_speed_mobilenet_v2"),
    "table:matrix-speed-efficientnet_lite0": lambda r: render_matrix_speed(r, "matrix_speed_efficientnet_lite0"),
    "table:matrix-speed-mobilenet_v2-channels-last":
        lambda r: render_matrix_speed(r, "matrix_speed_mobilenet_v2_channels_last", "after", "channels-last"),
    "value:matrix-speed-budgets-mobilenet_v2-channels-last":
        lambda r: render_speed_budgets(r, "matrix_speed_mobilenet_v2_channels_last"),
    "value:matrix-speed-budgets-efficientnet_lite0":
        lambda r: render_speed_budgets(r, "matrix_speed_efficientnet_lite0"),
    **{f"table:matrix-speed-{model}-onnxruntime": (lambda r, m=model: render_matrix_speed(
        r, f"matrix_speed_{m}_onnxruntime", "after", "onnxruntime")) for model in SPEED_MODELS},
    **{f"value:matrix-speed-budgets-{model}-onnxruntime": (lambda r, m=model: render_speed_budgets(
        r, f"matrix_speed_{m}_onnxruntime")) for model in SPEED_MODELS},
    **{f"table:matrix-speed-{model}-channels-last-onnxruntime": (lambda r, m=model: render_matrix_speed(
        r, f"matrix_speed_{m}_channels_last_onnxruntime", "before", "channels-last-onnxruntime"))
       for model in SPEED_MODELS},
    **{f"value:matrix-speed-budgets-{model}-channels-last-onnxruntime": (lambda r, m=model: render_speed_budgets(
        r, f"matrix_speed_{m}_channels_last_onnxruntime")) for model in SPEED_MODELS},
    "table:matrix-regenerated": render_matrix_regenerated,
    "table:table1": lambda r: render_table1(r, "table1"),
    "table:table1-official": lambda r: render_table1(r, "table1_official"),
    "table:table1-losses": render_table1_losses,
    "table:controls": render_controls,
    "table:file-only": render_file_only,
    "table:serving-throughput": render_serving_throughput,
    "table:serving-overhead": render_serving_overhead,
    "table:serving-overhead-control": lambda r: render_serving_overhead(r, "overhead_control.json"),
    "table:serving-overhead-grpc": lambda r: render_serving_overhead(r, "overhead_grpc.json"),
    "table:serving-overhead-grpc-control": lambda r: render_serving_overhead(r, "overhead_grpc_control.json"),
    "table:serving-overhead-grpc-direct": lambda r: render_serving_overhead(r, "overhead_grpc_direct.json"),
    "table:serving-overhead-direct": lambda r: render_serving_overhead(r, "overhead_direct.json"),
    "value:access-log-cost": value_recording_cost,
    "table:ablations": render_ablations,
    "table:seven-mnist": render_seven_mnist,
    "table:mnist-recipes": render_mnist_recipes,
    "table:mnist-classes": render_mnist_classes,
    "table:mnist-direction": render_mnist_direction,
    "value:keyrec-file-ms": value_keyrec_ms,
    "value:masked-vanishing": value_masked_vanishing,
    "value:matrix-cost": value_matrix_cost,
    "value:noise-positions": value_noise_positions,
    "value:masked-gradient": value_masked_gradient,
    "value:masked-dlr": value_masked_dlr,
    "value:masked-dlr-short": value_masked_dlr_short,
    "value:key-size-mobilenet_v2": value_key_size,
    "value:private-blackbox": value_private_blackbox,
    "value:private-minutes": value_private_minutes,
    "value:matrix-photos-mobilenet_v2": value_matrix_photos,
    "value:ratio-above-one": value_ratio_above_one,
    "value:mnist-ratio-at-most-one": value_mnist_ratio_at_most_one,
    "value:mnist-ratio-range": value_mnist_ratio_range,
    "value:mnist-mirror": value_mnist_mirror,
    "value:photos": value_photos,
    "value:mobilenet_v2-labelled": value_labelled,
    "value:rho-fall": value_rho_fall,
    "value:mnist-defended-lost": value_mnist_defended_lost,
    "table:private-decision": render_private_decision,
    "table:private-threats": render_private_threats,
    "table:private-threats-head": lambda r: render_private_threats(r, "private_head"),
    "table:private-threats-block": lambda r: render_private_threats(r, "private_block"),
    "table:private-owners": render_private_owners,
    "value:private-transfer-owners": value_private_transfer_owners,
    "value:private-pairs": value_private_pairs,
    "value:private-pairs-head": lambda r: value_private_pairs(r, "private_head"),
    "value:private-pairs-block": lambda r: value_private_pairs(r, "private_block"),
    "value:private-readout-device-head": value_private_readout,
}


# --- regions ---


def render_text(text: str, reports: Reports, where: str = "") -> tuple[str, list[str], set[str]]:
    """(the text with every region rendered, the names of regions whose content changed, the names used)."""
    changed: list[str] = []
    used: set[str] = set()
    begins = ANY_BEGIN.findall(text)
    complete = [m.group(1) for m in BLOCK.finditer(text)] + [m.group(1) for m in INLINE.finditer(text)]
    for name in begins:
        if name not in complete:
            raise RenderError(
                f"{where}: region {name} has no matching '<!-- END {name} -->'"
                + (" on the same line" if name.startswith("value:") else " on its own line")
            )

    def produce(name: str) -> str:
        if name not in RENDERERS:
            raise RenderError(f"{where}: unknown region {name} (known: {', '.join(sorted(RENDERERS))})")
        used.add(name)
        return RENDERERS[name](reports)

    def block(match: re.Match) -> str:
        name, old = match.group(1), match.group(2)
        new = "\n" + produce(name).strip("\n") + "\n\n"
        if old != new:
            changed.append(name)
        return f"<!-- BEGIN {name} -->\n{new}<!-- END {name} -->"

    def inline(match: re.Match) -> str:
        name, old = match.group(1), match.group(2)
        new = produce(name)
        if "\n" in new:
            raise RenderError(f"{where}: {name} renders several lines; use it as a table region")
        if old != new:
            changed.append(name)
        return f"<!-- BEGIN {name} -->{new}<!-- END {name} -->"

    return INLINE.sub(inline, BLOCK.sub(block, text)), changed, used


def documents(root: Path) -> list[Path]:
    """README.md, docs/**/*.md and the reports written by hand around rendered tables (the matrix's speed)."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")),
            *sorted((root / "reports").glob("matrix_speed_*/report.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region disagrees")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout (README.md, docs/, reports/matrix_speed_*/report.md)")
    parser.add_argument("--reports", type=Path, help="the reports folder (default: ROOT/reports)")
    args = parser.parse_args(argv)
    reports = Reports(args.reports or args.root / "reports")
    problems, used = [], set()
    try:
        for path in documents(args.root):
            where = str(path.relative_to(args.root))
            text = path.read_text()
            new, changed, names = render_text(text, reports, where)
            used |= names
            if args.check:
                problems += [f"{where}: {name} disagrees with the reports" for name in changed]
            elif new != text:
                path.write_text(new)
                print(f"rendered {where}: {', '.join(changed)}")
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems += [
        f"region {name} is rendered nowhere in README.md, docs/ or reports/matrix_speed_*/report.md"
        for name in sorted(set(RENDERERS) - used)
    ]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems and args.check:
        print("run `python scripts/render_docs.py` to render them from reports/", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
