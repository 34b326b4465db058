"""Table 2 with many images per class: which fake output wins for each real class (counts, their markdown
table and heatmap), and whether the images a scheme loses end where the attack on the original model ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.records import ImageRecord

from .kit import markdown_table


def fake_output_counts(records: list[ImageRecord], n_real: int) -> np.ndarray:
    """Table 2 with many images per class: (n_real, n_real + 1) counts; row c = the images whose original
    top-1 is c, column j < n_real = the un-permuted top-1 was fake output j (index n_real + j), the last
    column = a real output won. The diagonal is the fake output that mirrors the real class."""
    counts = np.zeros((n_real, n_real + 1), dtype=np.int64)
    for r in records:
        if not 0 <= r.original_top1 < n_real or not 0 <= r.plain_top1 < 2 * n_real:
            raise InvalidArgument(f"{r.image}: top-1 indices out of range for {n_real} classes")
        counts[r.original_top1, r.plain_top1 - n_real if r.plain_top1 >= n_real else n_real] += 1
    return counts


def counts_markdown(counts: np.ndarray) -> list[str]:
    """The count table as markdown lines: one row per real class, one column per fake output."""
    n = counts.shape[0]
    header = ["real class \\ winning fake output", *(f"F{j}" for j in range(n)), "a real output", "images"]
    rows = [[c, *(f"**{v}**" if j == c and v else v for j, v in enumerate(counts[c])), counts[c].sum()]
            for c in range(n)]
    return markdown_table(header, rows)


def counts_heatmap(path: Path, panels: dict[str, np.ndarray], title: str) -> None:
    """One panel per model: the fraction of each real class's images (rows) won by each fake output
    (columns, and a last one for "a real output"), counts written in the cells."""
    from fakegradient.evaluation.figures import panel_grid, save_png  # the Agg backend

    fig, axes = panel_grid(len(panels), 4.2, 4)
    for ax, (name, counts) in zip(axes, panels.items()):
        n = counts.shape[0]
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
        for (c, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, c, str(v), ha="center", va="center", fontsize=6,
                        color="black" if share[c, j] > 0.5 else "white")
        ax.set_xticks(range(n + 1), [str(j) for j in range(n)] + ["real"], fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in range(n)], fontsize=7)
        ax.set_xlabel("winning fake output (un-permuted)")
        ax.set_ylabel("original top-1 class")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    save_png(fig, path)


def same_target_as_original(records: list[ImageRecord], method: str = "fake-gradient") -> tuple[int, int]:
    """Among the images ``method`` loses (per model), how many end on the same real class as the attack on
    the unprotected model (same model, same image): (that count, images lost with an original record)."""
    target = {(r.model, r.image): r.adversarial_top1 for r in records if r.method == "original"}
    lost = [r for r in records if r.method == method and not r.defense_success and (r.model, r.image) in target]
    return sum(r.adversarial_top1 == target[(r.model, r.image)] for r in lost), len(lost)
