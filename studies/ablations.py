"""Ablations: what in the construction produces the defense?

One command, ``python -m studies.ablations --out reports/ablations --seed 0``, runs on one model (default
MobileNetV2, the 20 labelled photos):

- S_a sweep (1, 1.5, 2, 5, 10, 20, 50) for the methods that take S_a (Fake Gradient and the controls);
- DeepFool's candidates (2, 5, 10, 20) for every method, S_a = 20, clipping off;
- clipping to [0, 1] on, candidates 10, S_a = 20.

Every setting runs :func:`fakegradient.evaluation.runner.evaluate` (the original model attacked beside
the protected ones, as a sanity baseline) and is stored at once in ``OUT/settings/<id>.json`` (a rerun
skips the settings already there — ``--fresh`` discards them; ``--from-stored`` runs nothing and tabulates
them). Writes ``OUT/ablations.md``, ``OUT/ablations.csv`` and ``OUT/ablations.png``.

Which methods are swept is decided in one place, :func:`swept_methods`.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fakegradient.atomic import write_bytes_atomic
from fakegradient.defaults import CANDIDATES, EMBEDDED_DATA, EMBEDDED_SPEC, SCALE
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation import figures
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.records import aggregate_by
from fakegradient.methods import METHODS, ORIGINAL

from .kit import markdown_table, rate_text, run_study, study_parser, write_csv

if TYPE_CHECKING:
    from fakegradient.evaluation.runner import EvaluationResult

MODULE = "studies.ablations"
SCALES = (1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0)
CANDIDATE_SWEEP = (2, 5, 10, 20)


@dataclass(frozen=True)
class Sweep:
    """The methods the ablations attack: ``every`` in the candidates and clipping settings (table order, the
    original first, as the sanity baseline), ``scaled`` in the S_a sweep (S_a changes only these)."""

    every: tuple[str, ...]
    scaled: tuple[str, ...]


def swept_methods() -> Sweep:
    """The one place that decides which schemes are swept: the original, the paper's schemes and the controls
    (registry order); S_a sweeps those whose capabilities say it applies (``uses_scale``)."""
    swept = tuple(name for name, m in METHODS.items() if m.protects and (m.in_paper or m.control))
    return Sweep((ORIGINAL, *swept), tuple(n for n in swept if METHODS[n].capabilities.uses_scale))


SWEEP = swept_methods()


@dataclass(frozen=True)
class Setting:
    """One evaluation of the grid: S_a, candidates, clipping and the methods it attacks."""

    scale: float
    candidates: int
    clip: bool
    methods: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"scale{self.scale:g}_cand{self.candidates}_clip{int(self.clip)}"


def grid() -> list[Setting]:
    """The settings, each run once (S_a = 20, candidates 10, clip off is shared by both sweeps)."""
    settings = [Setting(SCALE, c, False, SWEEP.every) for c in CANDIDATE_SWEEP]
    settings += [Setting(s, CANDIDATES, False, SWEEP.scaled) for s in SCALES if s != SCALE]
    return settings + [Setting(SCALE, CANDIDATES, True, SWEEP.every)]


def run_setting(setting: Setting, model: str, data: str, seed: int, limit: int | None, device: str) -> list[dict]:
    """Rows (one per method) of one setting: its rates with k, n and Wilson 95 % intervals, and ρ."""
    from fakegradient.evaluation.runner import evaluate

    config = EvaluationConfig(models=(model,), methods=setting.methods, data=data, limit=limit, seed=seed,
                              scale=setting.scale, candidates=setting.candidates, clip=setting.clip, device=device,
                              heatmap_images=0, timing_repeats=2)
    return rows_of(setting, evaluate(config, progress=True))


def rows_of(setting: Setting, result: EvaluationResult) -> list[dict]:
    """The rows of ``setting`` from its EvaluationResult (records of the setting's methods only)."""
    rows = []
    for (_, method), a in aggregate_by([r for r in result.records if r.method in setting.methods]).items():
        rows.append({"setting": setting.id, "scale": setting.scale if method in SWEEP.scaled else None,
                     "candidates": setting.candidates, "clip": setting.clip, "method": method,
                     "images": a["images"], **{k: a[k] for k in (
                         "fake_output_pct", "defense_success_pct", "defense_success_pct_k",
                         "defense_success_pct_ci95", "attack_changed_served_pct", "rho_median",
                         "rho_normalized_median", "l2_ratio_median", "iterations_mean")}})
    return rows


def run(out: Path, model: str = EMBEDDED_SPEC, data: str = EMBEDDED_DATA, seed: int = 0, limit: int | None = None,
        device: str = "cpu", fresh: bool = False, only: tuple[str, ...] = (), from_stored: bool = False) -> list[dict]:
    """Every setting of :func:`grid` (stored ones reused; ``only``: just these ids, e.g. to share the grid
    between processes, and no table), then the table, CSV and PNG. ``from_stored``: run nothing, tabulate
    the stored settings (the missing ones are "—")."""
    folder = out / "settings"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    wanted = {"model": model, "data": data, "seed": seed, "limit": limit}
    for setting in grid():
        if only and setting.id not in only:
            continue
        path = folder / f"{setting.id}.json"
        stored = json.loads(path.read_text()) if path.is_file() else None
        if from_stored and (stored is None or stored["run"] != wanted):
            continue
        if stored is None or stored["run"] != wanted:
            stored = {"run": wanted, "rows": run_setting(setting, model, data, seed, limit, device)}
            write_bytes_atomic(path, json.dumps(stored, indent=1).encode())
        rows += stored["rows"]
    if not rows:
        raise FakeGradientError(f"no stored settings in {folder} for {wanted}: run without --from-stored")
    if not only:
        write(out, rows, wanted)
    return rows


def write(out: Path, rows: list[dict], run: dict) -> None:
    """``ablations.md`` (tables), ``ablations.csv`` (one row per setting and method), ``ablations.png``."""
    write_csv(out / "ablations.csv", rows)
    _figure(out / "ablations.png", rows)
    write_bytes_atomic(out / "ablations.md", _markdown(rows, run).encode())


def _cell(row: dict) -> str:
    return f"{rate_text(row['defense_success_pct_k'], row['images'])}; ρ {row['rho_median']:.5f}"


def _markdown(rows: list[dict], run: dict) -> str:
    name = {m: METHODS[m].display for m in METHODS}
    lines = [f"# Ablations: {run['model']}, data `{run['data']}`, seed {run['seed']}", "",
             "Defense success: k/n = % [Wilson 95 % interval], and median ρ (pixels, ‖r‖₂/‖x‖₂). "
             "The original model is attacked in the same runs as the sanity baseline (its defense success is "
             "100 % − the attack's success). Fake output (%) = served top-1 on a fake output.", "",
             "## S_a sweep (candidates 10, no clipping)", "",
             "S_a changes only the methods below; their sanity baseline, the original model (no S_a), is the "
             "\"candidates 10\" column of the next table (the same attack).", ""]
    table = []
    for scale in SCALES:
        cells = []
        for m in SWEEP.scaled:
            row = next((r for r in rows if r["method"] == m and r["scale"] == scale and not r["clip"]
                        and r["candidates"] == CANDIDATES), None)
            cells.append("—" if row is None else f"{_cell(row)}; fake output {row['fake_output_pct']:.0f} %")
        table.append([f"{scale:g}", *cells])
    lines += markdown_table(["S_a", *(name[m] for m in SWEEP.scaled)], table)
    for title, keep in (("DeepFool candidates (S_a = 20, no clipping)", lambda r: not r["clip"]),
                        ("Clipping to [0, 1] on (S_a = 20, candidates 10)", lambda r: r["clip"])):
        chosen = [r for r in rows if keep(r) and r["scale"] in (None, SCALE)]
        candidates = sorted({r["candidates"] for r in chosen})
        table = [[name[m], *(next((_cell(r) for r in chosen if r["method"] == m and r["candidates"] == c), "—")
                             for c in candidates)] for m in SWEEP.every]
        lines += ["", f"## {title}", "", *markdown_table(["Method", *(f"candidates {c}" for c in candidates)], table)]
    lines += ["", "Files: `ablations.csv` (every row, with median ρ in the normalised tensor and the median per-image "
                  "‖r‖₂ ratio to the original), `ablations.png`, `settings/*.json` (one per setting).", ""]
    return "\n".join(lines)


def _figure(path: Path, rows: list[dict]) -> None:
    """Defense success (Wilson 95 % bars) and median ρ against S_a, per method; and against candidates.
    One colour and marker per method in every panel (overlapping 100 % lines stay visible)."""
    plt = figures.plt
    style = {m: dict(color=f"C{i}", marker="os^Dv"[i % 5], linestyle=("-", "--", ":", "-.", "-")[i % 5],
                     markersize=8 - i, label=METHODS[m].display) for i, m in enumerate(SWEEP.every)}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m in SWEEP.scaled:
        points = sorted((r["scale"], r) for r in rows if r["method"] == m and r["scale"] is not None
                        and not r["clip"] and r["candidates"] == CANDIDATES)
        if not points:
            continue
        xs = [s for s, _ in points]
        ys = [r["defense_success_pct"] for _, r in points]
        err = [[y - r["defense_success_pct_ci95"][0] for y, (_, r) in zip(ys, points)],
               [r["defense_success_pct_ci95"][1] - y for y, (_, r) in zip(ys, points)]]
        axes[0].errorbar(xs, ys, yerr=err, capsize=3, **style[m])
        axes[1].plot(xs, [r["rho_median"] for _, r in points], **style[m])
    for m in SWEEP.every:
        points = sorted((r["candidates"], r) for r in rows if r["method"] == m and not r["clip"]
                        and r["scale"] in (None, SCALE))
        if points:
            axes[2].plot([c for c, _ in points], [r["defense_success_pct"] for _, r in points], **style[m])
    for ax, ylabel, xlabel, ticks in ((axes[0], "defense success (%), 95 % Wilson", "S_a", SCALES),
                                      (axes[1], "median ρ (pixels)", "S_a", SCALES),
                                      (axes[2], "defense success (%)", "DeepFool candidates (S_a = 20)",
                                       CANDIDATE_SWEEP)):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    axes[0].set_ylim(-5, 105)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(-5, 105)
    fig.suptitle("Ablations on MobileNetV2: what makes the defense work")
    fig.tight_layout()
    figures.save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/ablations"),
                          "tabulate the settings stored under --out/settings (the missing ones are \"—\")")
    parser.add_argument("--model", default=EMBEDDED_SPEC)
    parser.add_argument("--data", default=EMBEDDED_DATA)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fresh", action="store_true", help="discard the stored settings")
    parser.add_argument("--only", default="", help="comma-separated setting ids to run (no table): share the grid "
                                                   "between processes, then run once without --only")
    args = parser.parse_args(argv)
    only = tuple(x for x in args.only.split(",") if x)

    def work() -> Path:
        run(args.out, args.model, args.data, args.seed, args.limit, args.device, args.fresh, only, args.from_stored)
        return args.out / ("settings" if only else "ablations.md")

    return run_study(work)


if __name__ == "__main__":
    sys.exit(main())
