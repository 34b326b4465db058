"""The paired exact test (evaluation/paired.py) against known values and scipy's binomial test."""

import pytest

from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.paired import comparisons, mcnemar_exact, paired_test


def test_known_values():
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)  # 10/12 vs 5/12, the 5 discordant pairs one way
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(6, 0) == pytest.approx(0.03125)  # the smallest all-one-way count below 0.05
    assert mcnemar_exact(3, 1) == pytest.approx(0.625)  # 2 * (1 + 4) / 16
    assert mcnemar_exact(2, 2) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for b in range(0, 25, 3):
        for c in range(0, 25, 4):
            if b + c:
                assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_paired_test_counts_only_the_images_both_arms_hold():
    a = {f"i{k}": k < 10 for k in range(12)}  # 10/12
    b = {f"i{k}": k < 5 for k in range(12)} | {"extra": True}  # 5/12 on the same images, one more of its own
    result = paired_test(a, b)
    assert (result.pairs, result.only_a, result.only_b) == (12, 5, 0)
    assert result.p == pytest.approx(0.0625)
    assert paired_test(a, {"other": True}) is None


@pytest.mark.parametrize("bad", [(-1, 2), (1.5, 0)])
def test_bad_counts_are_refused(bad):
    with pytest.raises(InvalidArgument):
        mcnemar_exact(*bad)


def test_comparisons_pair_each_model_and_arm_present():
    outcomes = {("m1", "a"): {"x": True, "y": True, "z": False}, ("m1", "b"): {"x": False, "y": False, "z": False},
                ("m2", "a"): {"x": True}}
    rows = comparisons(outcomes, [("a", "b"), ("c", "b")])
    assert rows == [{"model": "m1", "a": "a", "b": "b", "pairs": 3, "only_a": 2, "only_b": 0, "p": 0.5}]
