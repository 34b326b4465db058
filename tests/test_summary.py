"""The adaptive matrix's statistics from per-image records (evaluation/summary.py): the paired exact test of
every scheme against the original, and the under-powered flag of iterative white-box attacks."""

import pytest

from fakegradient.evaluation.records import AttackerRecord
from fakegradient.evaluation.summary import AdaptiveResult

BUDGETS = {"base_l2": 0.1, "whitebox_l2": 0.2, "blackbox_l2": 4.0, "blackbox_queries": 10.0}


def records(method, attacker, defended, l2=0.1):
    l2s = l2 if isinstance(l2, list) else [l2] * len(defended)
    return [AttackerRecord("m", method, attacker, f"i{i}", d, 0.01, l2s[i]) for i, d in enumerate(defended)]


def rows(result):
    return {(r["method"], r["attacker"]): r for r in result.matrix()}


def test_every_scheme_cell_has_its_paired_p_value_against_the_original():
    """10/12 vs 5/12 with the 5 discordant pairs all one way: p = 0.0625 (not significant at n = 12)."""
    result = AdaptiveResult(records("original", "square", [True] * 5 + [False] * 7)
                            + records("fake-gradient", "square", [True] * 10 + [False] * 2)
                            + records("random-weight", "square", [False] * 5 + [True] * 5 + [False] * 2),
                            budgets=BUDGETS)
    by = rows(result)
    assert by["fake-gradient", "square"]["p_vs_original"] == pytest.approx(0.0625)
    assert (by["fake-gradient", "square"]["defended_only_here"], by["fake-gradient", "square"]["defended_only_original"]) == (5, 0)
    # random-weight: 5 defended only here (i5-i9), 5 only on the original (i0-i4): no difference, p = 1
    assert by["random-weight", "square"]["p_vs_original"] == 1.0
    assert by["original", "square"]["p_vs_original"] is None


def test_the_p_value_pairs_images_by_name_when_an_attacker_ran_on_fewer():
    result = AdaptiveResult(records("original", "pgd", [False] * 8)
                            + records("fake-gradient", "pgd", [True] * 6), budgets=BUDGETS)  # first 6 images
    cell = rows(result)["fake-gradient", "pgd"]
    assert (cell["defended_only_here"], cell["defended_only_original"]) == (6, 0)
    assert cell["p_vs_original"] == pytest.approx(2 / 2**6)


def test_an_iterative_attack_breaking_fewer_than_deepfool_within_its_budget_is_under_powered():
    """PGD breaks 7 of 12 unprotected where DeepFool changes 11 within the same budget (0.2): under-powered,
    though not too weak (7/12 > 50 %); APGD breaks all 11; Square is not iterative white box."""
    deepfool_l2 = [0.1] * 11 + [0.5]  # the last one only beyond the budget
    result = AdaptiveResult(records("original", "naive", [False] * 12, deepfool_l2)
                            + records("original", "pgd", [False] * 7 + [True] * 5)
                            + records("fake-gradient", "pgd", [True] * 12)
                            + records("original", "apgd", [False] * 11 + [True])
                            + records("original", "square", [False] * 3 + [True] * 9), budgets=BUDGETS)
    by = rows(result)
    for method in ("original", "fake-gradient"):
        assert by[method, "pgd"]["under_powered"] and not by[method, "pgd"]["too_weak"]
        assert by[method, "pgd"]["deepfool_within_k"] == 11
    assert not by["original", "apgd"]["under_powered"] and by["original", "apgd"]["deepfool_within_k"] == 11
    assert by["original", "square"]["deepfool_within_k"] is None and not by["original", "square"]["under_powered"]
    assert by["original", "square"]["too_weak"]
