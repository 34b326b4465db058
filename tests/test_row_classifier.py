"""The learned file-only attacker (attacks/row_classifier.py, evaluation/learned_rows.py) and the single
oracles of attacks/key_recovery.py, on small synthetic heads protected with seeded keys: the classifier
fitted on some heads names the real rows of another (leave one head out), its features do not depend on the
head's scale or row order, and the sign-pattern oracle pairs the released code's official-bias fakes."""

import numpy as np
import pytest
import torch
from torch import nn

from fakegradient.attacks.key_recovery import recover_real_rows, recover_with
from fakegradient.attacks.row_classifier import FEATURE_NAMES, fit_row_classifier, row_features
from fakegradient.errors import InvalidArgument
from fakegradient.evaluation import learned_rows
from fakegradient.methods import scheme

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_head(seed: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained-looking head (n, d), (n,): a shared low-rank part, heavy-tailed entries, a column profile
    with near-dead features (as after a ReLU trunk)."""
    rng = np.random.default_rng(seed)
    profile = rng.gamma(0.7, 1.0, d)
    profile[rng.random(d) < 0.2] = 0.02
    w = (0.5 * rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_t(3, (n, d))) * profile
    return torch.tensor(0.05 * w, dtype=torch.float32), torch.tensor(rng.normal(0, 0.05, n), dtype=torch.float32)


def protected(method: str, seed: int, n: int, d: int, fake_bias: str = "paper"):
    """(W_en (2n, d), b_en (2n,), real mask (2n,)) of a synthetic head under the seeded key ``seed``."""
    weight, bias = synthetic_head(seed, n, d)
    w_en, b_en, permutation = scheme(method).encrypted_head(weight, bias, seed=seed, fake_bias=fake_bias)
    mask = np.zeros(2 * n, dtype=bool)
    mask[permutation.numpy()[:n]] = True
    return w_en.numpy(), b_en.numpy(), mask


TRAIN = [(0, 24, 64), (1, 32, 48), (2, 20, 96), (3, 28, 80)]  # (seed, N, D): other sizes than the held-out head


@pytest.mark.parametrize("method", ["fake-gradient", "scaled-copy"])
def test_the_classifier_names_the_real_rows_of_a_held_out_head(method):
    """Fitted on four heads of other sizes, it names every real row of the paper's scheme on a fifth head."""
    classifier = fit_row_classifier([protected(method, *spec) for spec in TRAIN], seed=0)
    w, b, mask = protected(method, 11, 40, 72)
    named = classifier.believed_real(w, b, 40)
    assert named.shape == (40,) and np.all(np.diff(named) > 0)
    assert mask[named].sum() == 40


def test_official_bias_defeats_bias_equality_but_not_the_sign_patterns():
    w, b, mask = protected("fake-gradient", 5, 30, 64, fake_bias="official")
    w, b = torch.from_numpy(w), torch.from_numpy(b)
    assert recover_with(w, b, "bias-equality") is None  # the released code's biases differ
    found = recover_with(w, b, "sign-pattern")
    assert found is not None and found.oracle == "sign-pattern"
    assert found.recovered_fraction(np.flatnonzero(mask)) == 1.0
    cascade = recover_real_rows(w, b)
    assert cascade.oracle == "sign-pattern" and cascade.recovered_fraction(np.flatnonzero(mask)) == 1.0


def test_single_oracles_on_the_papers_bias_and_on_the_hardened_variant():
    w, b, mask = protected("fake-gradient", 6, 30, 64)
    found = recover_with(torch.from_numpy(w), torch.from_numpy(b), "bias-equality")
    assert found is not None and found.recovered_fraction(np.flatnonzero(mask)) == 1.0
    w, b, mask = protected("fake-gradient-hardened", 6, 30, 64)
    for oracle in ("bias-equality", "sign-pattern"):
        assert recover_with(torch.from_numpy(w), torch.from_numpy(b), oracle) is None
    by_norm = recover_with(torch.from_numpy(w), torch.from_numpy(b), "row-norm")
    assert by_norm is not None and by_norm.real_positions.shape == (30,)
    with pytest.raises(InvalidArgument):
        recover_with(torch.from_numpy(w), torch.from_numpy(b), "guess")


def test_features_have_one_column_per_name_and_ignore_scale_and_row_order():
    w, b, _ = protected("random-weight", 7, 16, 40)  # (the hardened fakes copy real norms: near-ties)
    features = row_features(w, b)
    assert features.shape == (32, len(FEATURE_NAMES)) and np.isfinite(features).all()
    assert row_features(w, b, rows=[3, 5]).shape == (2, len(FEATURE_NAMES))
    np.testing.assert_allclose(row_features(w, b, rows=[3, 5]), features[[3, 5]], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(row_features(7.5 * w, 7.5 * b), features, rtol=1e-4, atol=1e-6)
    order = np.random.default_rng(0).permutation(32)
    np.testing.assert_allclose(row_features(w[order], b[order]), features[order], rtol=1e-6, atol=1e-9)


def test_bad_heads_are_one_line_errors():
    w, b, _ = protected("fake-gradient", 8, 10, 20)
    with pytest.raises(InvalidArgument, match="bias"):
        row_features(w, b[:-1])
    with pytest.raises(InvalidArgument, match="finite"):
        row_features(np.full_like(w, np.nan), b)
    with pytest.raises(InvalidArgument, match="rows"):
        row_features(w, b, rows=[99])
    classifier = fit_row_classifier([protected("fake-gradient", 9, 10, 20)], seed=0)
    with pytest.raises(InvalidArgument, match="n_real"):
        classifier.believed_real(w, b, 0)
    with pytest.raises(InvalidArgument, match="real and fake"):
        fit_row_classifier([(w, b, np.ones(len(b), dtype=bool))])


def test_fitting_is_deterministic_for_a_seed():
    examples = [protected("random-weight", *spec) for spec in TRAIN]
    w, b, _ = protected("random-weight", 12, 24, 56)
    first = fit_row_classifier(examples, seed=3, rows_per_example=30).scores(w, b)
    again = fit_row_classifier(examples, seed=3, rows_per_example=30).scores(w, b)
    assert first.shape == (48,) and ((first >= 0) & (first <= 1)).all()
    np.testing.assert_allclose(first, again, rtol=1e-9, atol=1e-12)


def _public(name: str, seed: int, n: int, d: int) -> learned_rows.PublicModel:
    weight, bias = synthetic_head(seed, n, d)
    model = nn.Sequential(nn.Linear(d, n)).eval()
    with torch.no_grad():
        model[0].weight.copy_(weight)
        model[0].bias.copy_(bias)
    return learned_rows.PublicModel(name, model, torch.rand(1, d), weight, bias)


def test_leave_one_model_out_never_trains_on_the_attacked_model(monkeypatch):
    """The attacker protects the other public models under its own keys; the attacked model's head (found by
    its weights, whatever its name) is left out, and its real rows are named from its served head alone."""
    publics = {name: _public(name, seed, n, d) for name, seed, n, d in
               [("a", 21, 24, 64), ("b", 22, 32, 48), ("c", 23, 20, 96), ("d", 24, 28, 80)]}
    for name, public in publics.items():
        monkeypatch.setitem(learned_rows._MODELS, name, public)
    monkeypatch.setattr(learned_rows, "_CLASSIFIERS", {})
    held_out = publics["a"]
    classifier, used = learned_rows.train_leave_one_out("fake-gradient", (held_out.weight, held_out.bias), seed=0,
                                                        keys=2, names=tuple(publics))
    assert used == ("b", "c", "d")
    example = learned_rows.protected_example(held_out, "fake-gradient", seed=123)
    assert example is not None
    w, b, mask = example
    assert mask[classifier.believed_real(w, b, int(mask.sum()))].all()
    assert learned_rows.protected_example(held_out, "mixing", seed=1) is None  # no served row is a class
