"""Figures that cannot mislead (evaluation/figures.py, report.py): budget curves only where an attack ran at
several budgets (others a point with its interval), one colour scale per Fig. 6 with its colour bar, matrix
cells k/n with the cells that mean little hatched."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fakegradient.evaluation import figures, report
from fakegradient.evaluation.records import AttackerRecord
from fakegradient.evaluation.summary import AdaptiveResult

BUDGETS = {"base_l2": 0.1, "whitebox_l2": 0.2, "blackbox_l2": 4.0, "blackbox_queries": 10.0}


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn (instead of written): a list that each call appends its matplotlib figure to."""
    figs = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: figs.append(fig))
    return figs


def records(method, attacker, defended, l2=0.1):
    return [AttackerRecord("m", method, attacker, f"i{i}", d, 0.01, l2) for i, d in enumerate(defended)]


def adaptive_result():
    result = AdaptiveResult(records("original", "naive", [False] * 12) + records("fake-gradient", "naive", [True] * 12)
                            + records("original", "pgd", [False] * 7 + [True] * 5)
                            + records("fake-gradient", "pgd", [True] * 12)
                            + records("original", "feature-space", [False] * 12)
                            + records("fake-gradient", "feature-space", [False] * 12)
                            + records("original", "square", [True] * 4) + records("fake-gradient", "square", [True] * 4),
                            budgets=BUDGETS)
    curve = [(0.05, 100.0), (0.1, 50.0), (0.2, 0.0)]
    result.curves = {"feature-space": {"original": curve, "fake-gradient": curve},
                     "pgd": {"original": [(0.05, 100.0), (0.2, 41.7)], "fake-gradient": [(0.05, 100.0), (0.2, 100.0)]}}
    result.multi_budget = {"feature-space"}  # pgd's "curve" above is derived, not run at 0.05: not drawn
    return result


def test_only_attacks_run_at_several_budgets_are_curves():
    result = adaptive_result()
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    curves = report._measured_curves(result, rows, ["original", "fake-gradient"])
    assert "naive" not in curves  # minimum norm, no budget: the matrix only
    assert curves["pgd"] == {"original": [(0.2, 5, 12)], "fake-gradient": [(0.2, 12, 12)]}
    assert curves["feature-space"]["original"] == [(0.05, 12, 12), (0.1, 6, 12), (0.2, 0, 12)]
    assert curves["square"]["original"] == [(4.0, 4, 4)]


def test_single_budget_panels_draw_points_with_intervals_and_no_line(drawn):
    result = adaptive_result()
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    curves = report._measured_curves(result, rows, ["original", "fake-gradient"])
    figures.budget_curves(Path("unused.png"), curves, {"original": "Original", "fake-gradient": "FG"}, "t", "original")
    axes = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_title()}
    for single in ("pgd", "square"):
        assert all(len(line.get_xdata()) <= 1 or np.ptp(line.get_xdata()) < 0.1 * min(line.get_xdata())
                   for line in axes[single].lines), single  # no line joins two budgets
        assert len(axes[single].containers) == 2  # one error bar per scheme
    assert max(len(line.get_xdata()) for line in axes["feature-space"].lines) == 3


def test_matrix_cells_that_mean_little_are_hatched(drawn):
    assert report._caveats({"too_weak": True, "under_powered": True, "n": 4}) == ["too weak", "under-powered", "n < 10"]
    assert report._caveats({"too_weak": False, "under_powered": False, "n": 23}) == []
    values = np.array([[0.0, 100.0], [50.0, np.nan]])
    figures.matrix_heatmap(Path("unused.png"), values, [["0/23", "23/23"], ["2/4", "n/a"]], ["a", "b"], ["x", "y"],
                           "t", [[[], ["too weak"]], [["under-powered", "n < 10"], []]])
    ax = drawn[0].axes[0]
    hatched = {(p.get_x() + 0.5, p.get_y() + 0.5): p.get_hatch() for p in ax.patches if p.get_hatch()}
    assert hatched == {(1.0, 0.0): "///", (0.0, 1.0): figures.HATCHES["under-powered"] + "..."}
    assert [t.get_text() for t in ax.texts] == ["0/23", "23/23", "2/4", "n/a"]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"too weak", "under-powered", "n < 10"}


def test_fig6_heatmaps_share_one_colour_scale_with_a_colour_bar(drawn):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g)
    figures.perturbation_heatmaps(Path("unused.png"), images, 0.1 * torch.randn(2, 3, 8, 8, generator=g),
                                  0.01 * torch.randn(2, 3, 8, 8, generator=g), "t")
    fig = drawn[0]
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "hot"]
    assert len(heat) == 4 and len({im.get_clim() for im in heat}) == 1
    colour_bars = [ax for ax in fig.axes if "one scale" in ax.get_xlabel() + ax.get_ylabel()]
    assert len(colour_bars) == 1
    small = [im for im in heat if "original" in im.axes.get_title()]  # 10x smaller r: darker, not rescaled
    assert all(im.get_array().max() < 0.5 * heat[0].get_clim()[1] for im in small)
