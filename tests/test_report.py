"""The adaptive matrix's cells in report.md (evaluation/report.py): k/n, interval, the paired p against the
original, and the under-powered and too-weak marks."""

from fakegradient.evaluation.records import AttackerRecord
from fakegradient.evaluation.report import _cell_text
from fakegradient.evaluation.summary import AdaptiveResult

BUDGETS = {"base_l2": 0.1, "whitebox_l2": 0.2, "blackbox_l2": 4.0, "blackbox_queries": 10.0}


def records(method, attacker, defended, l2=0.1):
    return [AttackerRecord("m", method, attacker, f"i{i}", d, 0.01, l2) for i, d in enumerate(defended)]


def test_cells_say_p_under_powered_and_too_weak():
    result = AdaptiveResult(records("original", "naive", [False] * 12) + records("original", "pgd", [False] * 7 + [True] * 5)
                            + records("fake-gradient", "pgd", [True] * 12)
                            + records("original", "square", [True] * 12) + records("fake-gradient", "square", [True] * 12),
                            budgets=BUDGETS)
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    assert _cell_text(rows["original", "pgd"]) == ("5/12 = 42 % [19–68] — under-powered (DeepFool changes 12/12 "
                                                   "within the budget)")
    assert _cell_text(rows["fake-gradient", "pgd"]) == "12/12 = 100 % [76–100], p = 0.016 — under-powered"  # 7 discordant, one way
    assert _cell_text(rows["fake-gradient", "square"]) == "12/12 = 100 % [76–100], p = 1 — too weak to mean anything"
    assert _cell_text(None) == "n/a"
