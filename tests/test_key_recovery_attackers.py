"""Key-recovery attackers beyond the file-only one, each against known (seeded) keys on the digits model:
known plaintext (labelled images; public weights; public outputs) and blind (which positions win)."""

import numpy as np
import pytest
import torch

from fakegradient import protect
from fakegradient.attacks.blind import recover_by_winners
from fakegradient.attacks.key_recovery import RecoveredRows, recover_real_rows
from fakegradient.attacks.known_plaintext import (
    recover_by_labelled_images,
    recover_by_public_outputs,
    recover_by_public_weights,
)
from fakegradient.errors import InvalidArgument
from fakegradient.head import build_head, head_parameters, replace_module

SCHEMES = ("fake-gradient", "random-weight", "fake-gradient-hardened")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def labelled(x, y, k, seed):
    """k images of each class (10 k, 1, 8, 8) and their labels, drawn with a seeded generator."""
    g = np.random.default_rng(seed)
    idx = np.concatenate([g.choice(np.flatnonzero(y.numpy() == c), k, replace=False) for c in range(10)])
    return x[idx], y[idx]


def truth(key):
    return key.permutation[: key.n_real]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", SCHEMES)
def test_labelled_images_recover_the_key(digits_model, method, seed):
    """k = 2 labelled digits per class (20 queries) name every class's served position: the paper's
    scheme (its fakes share their real row's sign pattern: recognised as pairs), the hardened one too."""
    model, x, y = digits_model
    served, key = protect(model, method=method, example_input=x[:2], seed=seed)
    images, labels = labelled(x, y, 2, seed)
    recovered = recover_by_labelled_images(served, images, labels)
    assert recovered.queries == 20 and recovered.seconds >= 0
    assert recovered.oracle == ("labelled-images+pairs" if method == "fake-gradient" else "labelled-images")
    minimum = 0.9 if method == "random-weight" else 1.0  # measured: 0.9-1.0 / 1.0 / 1.0 over seeds 0-4
    assert recovered.mapped_fraction(truth(key)) >= minimum
    assert recovered.recovered_fraction(truth(key)) >= minimum


@pytest.mark.parametrize("method", SCHEMES)
def test_public_weights_and_outputs_recover_the_key(digits_model, method):
    model, x, _ = digits_model
    served, key = protect(model, method=method, example_input=x[:2], seed=3)
    by_weights = recover_by_public_weights(*head_parameters(served.get_submodule(key.head)),
                                           *head_parameters(model[-1]))
    noise = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    by_outputs = recover_by_public_outputs(served, model, noise)
    for recovered in (by_weights, by_outputs):
        np.testing.assert_array_equal(recovered.class_positions, truth(key))
        assert recovered.recovered_fraction(truth(key)) == 1.0
    assert (by_weights.queries, by_outputs.queries) == (0, 4)


def test_public_weights_recover_the_key_whatever_the_fake_rows_are(digits_model):
    """Fake rows that are near copies of the real rows (noise 1e-3), a permutation of its own: matching
    to the public head still finds every real row, since real rows equal public ones up to rounding."""
    model = digits_model[0]
    weight, bias = head_parameters(model[-1])
    g = torch.Generator().manual_seed(0)
    fakes = weight + 1e-3 * torch.randn(weight.shape, generator=g)
    order = torch.randperm(20, generator=g)
    served_w, served_b = torch.cat([weight, fakes])[order], torch.cat([bias, bias])[order]
    served = torch.nn.Sequential(*list(model.children()))
    replace_module(served, "8", build_head(model[-1], served_w, served_b))
    real = np.argsort(order.numpy())[:10]  # served position of real class c
    np.testing.assert_array_equal(recover_by_public_weights(served_w, served_b, weight, bias).class_positions, real)
    noise = torch.rand((4, 1, 8, 8), generator=g)
    np.testing.assert_array_equal(recover_by_public_outputs(served, model, noise).class_positions, real)


@pytest.mark.parametrize("method", SCHEMES)
def test_blind_attacker_reads_the_real_rows_off_which_outputs_win(digits_model, method):
    """100 unlabelled digits: the paper's fakes win, so the least winning half is real; the others'
    fakes never win, so the most winning half is. The attacker knows which from the scheme's design."""
    model, x, _ = digits_model
    served, key = protect(model, method=method, example_input=x[:2], seed=0)
    recovered = recover_by_winners(served, x[:100], fakes_win=method == "fake-gradient")
    assert recovered.queries == 100 and len(recovered.real_positions) == 10
    assert recovered.class_positions is None and recovered.mapped_fraction(truth(key)) == 0.0
    assert recovered.recovered_fraction(truth(key)) >= 0.9  # measured 1.0 for each scheme
    wrong = recover_by_winners(served, x[:100], fakes_win=method != "fake-gradient")
    assert wrong.recovered_fraction(truth(key)) <= 0.1  # the wrong guess of the design gets the fakes


def test_file_only_attacker_reports_no_queries(digits_model):
    model, x, _ = digits_model
    served, key = protect(model, example_input=x[:2], seed=0)
    recovered = recover_real_rows(*head_parameters(served.get_submodule(key.head)))
    assert isinstance(recovered, RecoveredRows) and recovered.queries == 0
    assert recovered.recovered_fraction(truth(key)) == 1.0 and recovered.mapped_fraction(truth(key)) == 0.0


def test_bad_inputs_are_refused(digits_model):
    model, x, _ = digits_model
    served, _ = protect(model, example_input=x[:2], seed=0)
    with pytest.raises(InvalidArgument):
        recover_by_labelled_images(served, x[:5], np.zeros(5, int))  # one class only
    with pytest.raises(InvalidArgument):
        recover_by_labelled_images(served, x[:5], np.full(5, 10))  # out of range
    with pytest.raises(InvalidArgument):
        recover_by_labelled_images(served, x[:5], np.arange(5), pair_spread=1.0)
    weight, bias = head_parameters(model[-1])
    with pytest.raises(InvalidArgument):
        recover_by_public_weights(weight, bias, weight, bias)  # not 2N rows
    with pytest.raises(InvalidArgument):
        recover_by_public_outputs(model, model, x[:2])


def test_file_pairs_pair_each_real_row_with_one_fake_or_none(digits_model):
    from fakegradient.attacks.key_recovery import file_pairs

    model, x, _ = digits_model
    protected, key = protect(model, example_input=x[:2], seed=0)
    pairs = file_pairs(*head_parameters(protected.get_submodule(key.head)))
    real = set(truth(key).tolist())
    assert pairs is not None and len(pairs) == key.n_real
    assert all(len(real & {i, j}) == 1 for i, j in pairs)  # one real, one fake in every pair
    hardened, hardened_key = protect(model, method="fake-gradient-hardened", example_input=x[:2], seed=0)
    assert file_pairs(*head_parameters(hardened.get_submodule(hardened_key.head))) is None  # no pairing oracle
