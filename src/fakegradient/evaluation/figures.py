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
    """|r| summed over channels, (H, W), scaled to [0, 1]."""
    h = r.abs().sum(0).numpy()
    return h / (h.max() + 1e-12)


def perturbation_heatmaps(path: Path, images: torch.Tensor, protected: torch.Tensor, original: torch.Tensor,
                          title: str, top_fraction: float = 0.05) -> None:
    """Fig. 6: image, |r| on the protected model, |r| on the original, and where each concentrates.

    The last column marks the top ``top_fraction`` pixels of each heatmap: green = protected
    only, blue = original only, cyan = both (the paper's colours).
    """
    k = len(images)
    fig, axes = plt.subplots(k, 4, figsize=(12, 3 * k), squeeze=False)
    for i in range(k):
        hp, ho = _heat(protected[i]), _heat(original[i])
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
            ax.imshow(img, cmap=cmap)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
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


def budget_curves(path: Path, curves: dict[str, dict[str, list[tuple[float, float]]]], titles: dict[str, str],
                  title: str, baseline: str) -> None:
    """One panel per attacker: defense success (%) against the L2 budget for each scheme (the
    ``baseline`` scheme, the unprotected original, dashed black)."""
    fig, axes = panel_grid(len(curves), 4.2, 3.3)
    for ax, (attacker, by_method) in zip(axes, curves.items()):
        for method, points in by_method.items():
            xs, ys = zip(*points)
            style = {"color": "black", "linestyle": "--", "linewidth": 2, "zorder": 5} if method == baseline else {}
            ax.plot(xs, ys, marker="o", markersize=3, label=titles[method], **style)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:.2g}" for x in xs], fontsize=6)
        ax.minorticks_off()
        ax.set_ylim(-5, 105)
        ax.set_xlabel("L2 budget ‖r‖₂", fontsize=8)
        ax.set_ylabel("defense success (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(attacker, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def matrix_heatmap(path: Path, values: np.ndarray, text: list[list[str]], rows: list[str], columns: list[str],
                   title: str) -> None:
    """Attackers (rows) × schemes (columns): defense success (%) as colour, ``text`` in each cell; nan =
    the attack does not apply (grey)."""
    fig, ax = plt.subplots(figsize=(1.9 * len(columns) + 2.5, 0.42 * len(rows) + 1.6))
    shown = np.ma.masked_invalid(values)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, fontsize=8, rotation=15)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(image, ax=ax, label="defense success (%)")
    ax.set_title(title, fontsize=10)
    save_png(fig, path)
