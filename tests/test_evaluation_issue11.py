"""Issue 11: Wilson intervals (known values), the controls (scaled-copy, random-decoy), the released
code's variants (--bias official, --space normalized), ρ in both spaces and the per-image ‖r‖ ratio."""

import math
from pathlib import Path

import pytest
import torch

from fakegradient import methods
from fakegradient.core.fake_rows import (
    fake_gradient_rows,
    official_fake_bias,
    random_decoy_rows,
    scaled_copy_rows,
)
from fakegradient.data import Sample
from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.intervals import Rate, wilson
from fakegradient.evaluation.pipeline import Normalized, protected_pipeline
from fakegradient.evaluation.plan import Shard
from fakegradient.evaluation.records import ImageRecord, aggregate_by, l2_ratios
from fakegradient.evaluation.stages.naive import attack_batch
from fakegradient.evaluation.workbench import deepfool
from fakegradient.protection import protect

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 logits of two different GEMMs (same sums, another order)


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


# -- the controls and the official bias --------------------------------------------------------------------

def head(n=6, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, generator=g)


def test_control_rows_definitions():
    w, b = head()
    fw, fb = scaled_copy_rows(w, b, 5.0)
    assert torch.equal(fw, w * 5.0) and torch.equal(fb, b)
    dw, db = random_decoy_rows(w, b, 5.0, generator=torch.Generator().manual_seed(1))
    assert (dw > 0).all() and torch.equal(db, b)
    torch.testing.assert_close(dw.norm(dim=1), fake_gradient_rows(w, b, 5.0)[0].norm(dim=1), rtol=1e-5, atol=0)
    again, _ = random_decoy_rows(w, b, 5.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(dw, again)  # seeded: reproducible


def test_official_bias_formula():
    b = torch.tensor([0.5, -0.25, 0.0, 1.0])
    expected = 2.0 * (1.0 - b.abs()) * torch.tensor([1.0, -1.0, 1.0, 1.0])  # sign(0) = +1
    torch.testing.assert_close(official_fake_bias(b, 2.0), expected, rtol=0, atol=1e-7)


def features_net():
    """(B, 1, 4, 4) or (B, 16) → ReLU features (non-negative, as the ImageNet heads see) → 10 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("method", methods.CONTROLS)
def test_controls_decrypt_exactly(method):
    model, x = features_net(), torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    protected, key = protect(model, method=method, seed=3, example_input=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(key.decrypt(protected(x)), model(x), **TOL)


def test_controls_fake_output_behaviour():
    """random-decoy's fake outputs win on every input (positive rows on ReLU features); scaled-copy's
    fake output c is S_a (z_c - b_c) + b_c: an affine copy of real logit c, whose gradient is S_a times
    the real one (so an attack on it moves the real decision)."""
    model, x = features_net(), torch.randn(256, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        protected, key = protect(model, method="random-decoy", seed=3, example_input=x[:1])
        assert key.is_fake(protected(x).argmax(1).numpy()).all()
        protected, key = protect(model, method="scaled-copy", seed=3, example_input=x[:1])
        plain, real, b = key.decrypt_all(protected(x)), model(x), model[3].bias
        torch.testing.assert_close(plain[:, key.n_real:], 20.0 * (real - b) + b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["fake-gradient", "random-weight", "scaled-copy", "random-decoy"])
def test_official_bias_keeps_decryption(method):
    model = features_net()
    pipeline = Normalized(model, (0.0,), (1.0,))
    x = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    official, key = protected_pipeline(pipeline, method, scale=20.0, seed=1, probe=x[:1], bias="official")
    with torch.no_grad():
        torch.testing.assert_close(key.decrypt(official(x)), model(x), **TOL)
        served_bias = official.model[3].bias
        fake = torch.as_tensor(key.permutation[key.n_real:])
        torch.testing.assert_close(served_bias[fake], official_fake_bias(model[3].bias, 20.0), rtol=0, atol=1e-6)
        assert key.model_fingerprint != protect(model, method=method, seed=1, example_input=x[:1])[1].model_fingerprint
    hardened, _ = protected_pipeline(pipeline, "fake-gradient-hardened", scale=20.0, seed=1, probe=x[:1], bias="official")
    again, _ = protected_pipeline(pipeline, "fake-gradient-hardened", scale=20.0, seed=1, probe=x[:1])
    assert torch.equal(hardened.model[3].bias, again.model[3].bias)  # its own biases: not b_F = b_o


# -- options and the attack space --------------------------------------------------------------------------

def test_config_options():
    assert EvaluationConfig().bias == "paper" and EvaluationConfig().space == "pixel"
    for bad in (dict(bias="released"), dict(space="logits"), dict(space="normalized", clip=True)):
        with pytest.raises(InvalidArgument):
            EvaluationConfig(**bad)
    assert EvaluationConfig.from_dict(EvaluationConfig(bias="official", space="normalized").to_dict()).space == \
        "normalized"


def test_cli_has_the_options():
    from fakegradient.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--bias", "official", "--space", "normalized"])
    assert (args.bias, args.space) == ("official", "normalized")


def test_attack_space_and_both_rhos(tiny, tiny_input):
    """Normalised-space DeepFool is DeepFool on (x - μ)/σ: its pixel perturbation is σ·r_z, and both ρ
    are recorded; with μ = 0, σ = 1 the two spaces coincide."""
    samples = [Sample(Path(f"{i}.png"), None) for i in range(len(tiny_input))]
    shard, attack = Shard("t", "original", 0, 4), deepfool(EvaluationConfig())
    identity = Normalized(tiny, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()
    pixel, _ = attack_batch(shard, identity, identity, None, tiny_input, samples, attack, "pixel")
    same, _ = attack_batch(shard, identity, identity, None, tiny_input, samples, attack, "normalized")
    for a, b in zip(pixel, same):
        assert a.rho == pytest.approx(b.rho, rel=1e-4) and a.rho == pytest.approx(a.rho_normalized, rel=1e-5)
    scaled = Normalized(tiny, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    records, r = attack_batch(shard, scaled, scaled, None, tiny_input, samples, attack, "normalized")
    z = (tiny_input - scaled.mean) / scaled.std
    for i, rec in enumerate(records):
        assert rec.rho_normalized == pytest.approx(float((r[i] / scaled.std).norm() / z[i].norm()), rel=1e-5)
        assert rec.rho == pytest.approx(float(r[i].norm() / tiny_input[i].norm()), rel=1e-5)
        assert rec.attack_changed_served


@pytest.mark.slow  # matplotlib
def test_ablation_grid_and_outputs(tmp_path):
    from fakegradient.evaluation import ablations

    settings = ablations.grid()
    assert len({s.id for s in settings}) == len(settings) == 4 + 6 + 1  # S_a = 20 / candidates 10 run once
    rows = []
    for s in settings:
        for m in s.methods:
            k = 20 if m == "fake-gradient" else 0
            lo, hi = (100 * x for x in wilson(k, 20))
            rows.append({"setting": s.id, "scale": s.scale if m in ablations.SCALED else None,
                         "candidates": s.candidates, "clip": s.clip, "method": m, "images": 20,
                         "fake_output_pct": 100.0, "defense_success_pct": 5 * k, "defense_success_pct_k": k,
                         "defense_success_pct_ci95": [lo, hi], "attack_changed_served_pct": 100.0,
                         "rho_median": 0.001, "rho_normalized_median": 0.004, "l2_ratio_median": 0.5,
                         "iterations_mean": 2.0})
    ablations.write(tmp_path, rows, {"model": "m", "data": "d", "seed": 0, "limit": None})
    text = (tmp_path / "ablations.md").read_text()
    assert "| 1.5 | 100 [84–100] n=20" in text and "candidates 2" in text and "Clipping" in text
    assert (tmp_path / "ablations.png").stat().st_size > 1000
    assert len((tmp_path / "ablations.csv").read_text().splitlines()) == len(rows) + 1


def test_photos_data_counts_distinct_photos_once():
    from fakegradient.evaluation.config import load_samples

    samples = load_samples(EvaluationConfig(data="photos"))
    assert len(samples) == 23 and len({s.path.name for s in samples}) == 23
    assert [s.label is None for s in samples] == [False] * 20 + [True] * 3
    assert len({s.path.read_bytes() for s in samples}) == 23  # no two files are copies
    assert len(load_samples(EvaluationConfig(data="photos", limit=21))) == 21
