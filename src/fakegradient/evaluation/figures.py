"""PNG figures: perturbation heatmaps (Fig. 6), model size (Fig. 7), inference time (Fig. 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..atomic import write_with  # noqa: E402


def save_png(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically as a PNG and close it."""
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def panel_grid(count: int, width: float, height: float, max_columns: int = 4) -> tuple[Any, list]:
    """A figure of ``count`` panels of ``width`` × ``height`` inches, at most ``max_columns`` a row; the
    unused cells of the last row switched off. Returns (figure, the ``count`` axes in reading order)."""
    columns = min(max_columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat[:count])


def _heat(r: torch.Tensor) -> np.ndarray:
    """|r| summed over channels (H, W), in pixel units (not rescaled: one colour scale per figure)."""
    return r.abs().sum(0).numpy()


def perturbation_heatmaps(path: Path, images: torch.Tensor, protected: torch.Tensor, original: torch.Tensor,
                          title: str, top_fraction: float = 0.05) -> None:
    """Fig. 6: image, |r| on the protected model, |r| on the original, and where each concentrates.

    Every heatmap of the figure shares one colour scale (0 to the largest |r| in it), shown by a colour
    bar, so that sizes compare across rows and models. The last column marks the top ``top_fraction``
    pixels of each heatmap: green = protected only, blue = original only, cyan = both (the paper's colours).
    """
    k = len(images)
    heats = [(_heat(protected[i]), _heat(original[i])) for i in range(k)]
    vmax = max(float(h.max()) for pair in heats for h in pair) or 1.0
    fig, axes = plt.subplots(k, 4, figsize=(12, 3 * k), squeeze=False)
    shown = None
    for i in range(k):
        hp, ho = heats[i]
        top_p = hp >= np.quantile(hp, 1 - top_fraction)
        top_o = ho >= np.quantile(ho, 1 - top_fraction)
        overlay = np.zeros((*hp.shape, 3))
        overlay[top_p & ~top_o] = (0, 0.8, 0)
        overlay[top_o & ~top_p] = (0, 0, 1)
        overlay[top_p & top_o] = (0, 1, 1)
        panels = [(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), "image", None),
                  (hp, "perturbation, Fake Gradient model", "hot"),
                  (ho, "perturbation, original model", "hot"),
                  (overlay, f"top {top_fraction:.0%}: green FG, blue orig., cyan both "
                            f"({(top_p & top_o).sum() / max(1, top_p.sum()):.0%} overlap)", None)]
        for ax, (img, label, cmap) in zip(axes[i], panels):
            image = ax.imshow(img, cmap=cmap, **({"vmin": 0.0, "vmax": vmax} if cmap else {}))
            shown = image if cmap else shown
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.colorbar(shown, ax=axes.ravel().tolist(), location="bottom", shrink=0.5, pad=0.03, aspect=40,
                 label="|r| summed over channels (pixels in [0, 1]); one scale for every heatmap of the figure")
    fig.suptitle(title)
    save_png(fig, path)


def grouped_bars(path: Path, names: list[str], series: dict[str, list[float]], ylabel: str, title: str,
                 errors: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """Bars per model for each series (Fig. 7 and 8); ``errors`` are (low, high) spreads."""
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 3.6))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for j, (label, values) in enumerate(series.items()):
        yerr = None
        if errors and label in errors:
            yerr = np.array([[v - lo for v, (lo, _) in zip(values, errors[label])],
                             [hi - v for v, (_, hi) in zip(values, errors[label])]])
        ax.bar(x + j * width - 0.4 + width / 2, values, width, label=label, yerr=yerr, capsize=3)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_png(fig, path)


def budget_curves(path: Path, curves: dict[str, dict[str, list[tuple[float, int, int]]]], titles: dict[str, str],
                  title: str, baseline: str) -> None:
    """One panel per attacker: defense success (%) against the L2 budget for each scheme, as measured:
    ``curves`` attacker → scheme → [(eps, k defended, n)]. An attack run at several budgets is a line with
    its Wilson 95 % band; one run at a single budget is a point at that budget with its Wilson interval
    (nothing drawn between budgets it never ran at). The ``baseline`` scheme (the original) in black."""
    from .intervals import wilson

    fig, axes = panel_grid(len(curves), 4.2, 3.3)
    for ax, (attacker, by_method) in zip(axes, curves.items()):
        budgets = sorted({eps for points in by_method.values() for eps, _, _ in points})
        for j, (method, points) in enumerate(by_method.items()):
            xs = np.array([eps for eps, _, _ in points])
            ys = np.array([100 * k / n for _, k, n in points])
            bounds = np.array([wilson(k, n) for _, k, n in points]) * 100
            style = {"color": "black", "zorder": 5} if method == baseline else {}
            if len(points) > 1:
                line, = ax.plot(xs, ys, marker="o", markersize=3, label=titles[method],
                                **style, **({"linestyle": "--", "linewidth": 2} if method == baseline else {}))
                ax.fill_between(xs, bounds[:, 0], bounds[:, 1], color=line.get_color(), alpha=0.12, linewidth=0)
            else:  # one budget: a point and its interval, spread sideways a little so schemes do not overlap
                x = xs * 1.04 ** (j - (len(by_method) - 1) / 2)
                ax.errorbar(x, ys, yerr=[ys - bounds[:, 0], bounds[:, 1] - ys], fmt="o", markersize=4, capsize=3,
                            label=titles[method], **style)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{x:.2g}" for x in budgets], fontsize=6)
        if len(budgets) == 1:
            ax.set_xlim(budgets[0] / 1.5, budgets[0] * 1.5)
        ax.minorticks_off()
        ax.set_ylim(-5, 105)
        ax.set_xlabel("L2 budget ‖r‖₂" + (" (run at this budget only)" if len(budgets) == 1 else ""), fontsize=8)
        ax.set_ylabel("defense success (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(attacker, fontsize=9)
    if curves:
        axes[0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


HATCHES = {"too weak": "///", "under-powered": "\\\\\\", "n < 10": "..."}  # caveat → hatch of its cells


def matrix_heatmap(path: Path, values: np.ndarray, text: list[list[str]], rows: list[str], columns: list[str],
                   title: str, caveats: list[list[list[str]]] | None = None) -> None:
    """Attackers (rows) × schemes (columns): defense success (%) as colour, ``text`` in each cell (k/n); nan =
    the attack does not apply (grey). ``caveats[i][j]``: names in :data:`HATCHES` hatched over that cell
    (a result that means little: its baseline too weak, the attack under-powered, few images)."""
    from matplotlib.patches import Patch, Rectangle

    fig, ax = plt.subplots(figsize=(1.9 * len(columns) + 2.5, 0.42 * len(rows) + 1.9))
    shown = np.ma.masked_invalid(values)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    used: set[str] = set()
    for i in range(len(rows)):
        for j in range(len(columns)):
            marks = [c for c in (caveats[i][j] if caveats else []) if c in HATCHES]
            if marks:
                used.update(marks)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=0, edgecolor="#444444",
                                       hatch="".join(HATCHES[c] for c in marks)))
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "linewidth": 0}
                    if marks else None)
    ax.set_xticks(range(len(columns)), columns, fontsize=8, rotation=15)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(image, ax=ax, label="defense success (%)")
    if used:
        ax.legend(handles=[Patch(facecolor="white", edgecolor="#444444", hatch=HATCHES[c], label=c)
                           for c in HATCHES if c in used], loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(rows)),
                  ncol=len(used), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    save_png(fig, path)
