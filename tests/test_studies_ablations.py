"""studies.ablations: the grid of settings, the swept methods (one function) and the tables, CSV and PNG."""

import pytest

from fakegradient.evaluation.intervals import wilson
from fakegradient.methods import METHODS, ORIGINAL
from studies import ablations


def test_the_swept_methods_come_from_one_function():
    sweep = ablations.swept_methods()
    assert sweep == ablations.SWEEP and sweep.every[0] == ORIGINAL
    assert set(sweep.scaled) <= set(sweep.every) and "fake-gradient" in sweep.scaled
    assert all(METHODS[m].capabilities.uses_scale for m in sweep.scaled) and "random-weight" not in sweep.scaled


@pytest.mark.slow  # matplotlib
def test_ablation_grid_and_outputs(tmp_path):
    settings = ablations.grid()
    assert len({s.id for s in settings}) == len(settings) == 4 + 6 + 1  # S_a = 20 / candidates 10 run once
    rows = []
    for s in settings:
        for m in s.methods:
            k = 20 if m == "fake-gradient" else 0
            lo, hi = (100 * x for x in wilson(k, 20))
            rows.append({"setting": s.id, "scale": s.scale if m in ablations.SWEEP.scaled else None,
                         "candidates": s.candidates, "clip": s.clip, "method": m, "images": 20,
                         "fake_output_pct": 100.0, "defense_success_pct": 5 * k, "defense_success_pct_k": k,
                         "defense_success_pct_ci95": [lo, hi], "attack_changed_served_pct": 100.0,
                         "rho_median": 0.001, "rho_normalized_median": 0.004, "l2_ratio_median": 0.5,
                         "iterations_mean": 2.0})
    ablations.write(tmp_path, rows, {"model": "m", "data": "d", "seed": 0, "limit": None})
    text = (tmp_path / "ablations.md").read_text()
    assert "| 1.5 | 20/20 = 100 % [84–100]; ρ 0.00100; fake output 100 % |" in text
    assert "candidates 2" in text and "Clipping" in text
    assert (tmp_path / "ablations.png").stat().st_size > 1000
    assert len((tmp_path / "ablations.csv").read_text().splitlines()) == len(rows) + 1
