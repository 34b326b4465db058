"""evaluation.intervals: Wilson intervals (known values, scipy) and the aggregates of evaluation.records that
carry them (k, n, interval) with ρ in both spaces and the per-image ‖r‖ ratio."""

import math

import pytest

from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.intervals import Rate, wilson
from fakegradient.evaluation.records import ImageRecord, aggregate_by, l2_ratios

# -- Wilson intervals ---------------------------------------------------------------------------------------

# Wilson 95 % intervals to 4 decimals: Newcombe (Stat. Med. 1998, Table I, method 3) for 81/263, 15/148,
# 0/20 and 1/29; the others
# and returned by scipy.stats.binomtest(k, n).proportion_ci(method="wilson").
KNOWN = {(20, 20): (0.8389, 1.0), (0, 20): (0.0, 0.1611), (10, 20): (0.2993, 0.7007),
         (81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 10): (0.0, 0.2775), (1, 29): (0.0061, 0.1718)}


@pytest.mark.parametrize("k, n", list(KNOWN))
def test_wilson_known_values(k, n):
    low, high = wilson(k, n)
    assert (low, high) == pytest.approx(KNOWN[(k, n)], abs=5e-5)


@pytest.mark.slow  # importing scipy.stats takes seconds
def test_wilson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(20, 20), (0, 20), (10, 20), (17, 20), (3, 1000), (1, 1)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_rate_text_and_containment():
    rate = Rate(20, 20)
    assert rate.text() == "100 [84–100] n=20"
    assert rate.contains(87.1) and rate.contains(100.0) and not rate.contains(80.0)  # 80 < 83.9
    with pytest.raises(InvalidArgument):
        wilson(3, 2)


def record(**overrides):
    base = dict(model="m", method="fake-gradient", image="a", label=3, original_top1=3, served_top1=17,
                served_top1_fake=True, plain_top1=13, decrypted_top1=3, adversarial_top1=3,
                attack_changed_served=True, rho=0.001, l2=1.0, linf=0.1, iterations=2, rho_normalized=0.002)
    return ImageRecord(**(base | overrides))


def test_aggregates_carry_intervals_and_the_ratio():
    records = [record(method="original", image="a", l2=2.0, served_top1_fake=False),
               record(method="original", image="b", l2=4.0, served_top1_fake=False, label=None),
               record(image="a", l2=1.0), record(image="b", l2=1.0, adversarial_top1=4)]
    assert l2_ratios(records)[2:] == [0.5, 0.25] and math.isnan(l2_ratios(records)[0])
    fg = aggregate_by(records)[("m", "fake-gradient")]
    assert fg["defense_success_pct"] == 50.0 and fg["defense_success_pct_n"] == 2
    assert fg["defense_success_pct_ci95"] == pytest.approx([100 * x for x in wilson(1, 2)])
    assert fg["l2_ratio_median"] == pytest.approx(0.375) and fg["l2_ratio_n"] == 2
    assert fg["rho_normalized_mean"] == pytest.approx(0.002)
    original = aggregate_by(records)[("m", "original")]
    assert original["original_accuracy_pct_n"] == 1 and original["l2_ratio_median"] is None
