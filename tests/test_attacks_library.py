"""The library attack adapters (foolbox PGD and C&W; ART APGD, Square, HopSkipJump) on the digits model.

Sanity baseline first: each attack must break the UNPROTECTED model at its budget, or its numbers on a
protected model mean nothing. Then the three targets on a protected model: the served model, the rows
key recovery named real, and the EOT-style sum over candidate real rows.
"""

import functools

import numpy as np
import pytest
import torch

from fakegradient import protect
from fakegradient.attacks._adapters import QueryCounter
from fakegradient.attacks.apgd import APGD
from fakegradient.attacks.cw import CarliniWagnerL2
from fakegradient.attacks.hopskipjump import HopSkipJump
from fakegradient.attacks.key_recovery import _pairs_by_bias, recover_real_rows
from fakegradient.attacks.pgd import L2PGD
from fakegradient.attacks.square import SquareAttack
from fakegradient.attacks.targets import OutputRows, pair_hypotheses
from fakegradient.errors import InvalidArgument
from fakegradient.head import head_parameters

# Budgets on 8x8 digits in [0, 1] (‖x‖₂ ≈ 3.7; DeepFool's median ‖r‖₂ ≈ 0.56 on this model)
ATTACKS = {
    "pgd": lambda: L2PGD(eps=1.0, steps=20),
    "apgd": lambda: APGD(eps=1.0, steps=20),
    "cw": lambda: CarliniWagnerL2(eps=1.5, steps=50, binary_search_steps=4),
    "square": lambda: SquareAttack(eps=2.0, queries=400),
    "hopskipjump": lambda: HopSkipJump(queries=500, eps=2.5),
}
BLACK_BOX = {"square", "hopskipjump"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_breaks_the_unprotected_model_within_its_budget(digits_model, name):
    model, x, _ = digits_model
    images = x[:8]
    attack = ATTACKS[name]()
    result = attack(model, images, generator=np.random.default_rng(0))
    assert result.success.float().mean().item() >= 0.875, (name, result.success)  # >= 7 of 8
    with torch.no_grad():
        assert torch.equal(result.adversarial_label, model(result.adversarial).argmax(1))
        assert torch.equal(result.clean_label, model(images).argmax(1))
    l2 = (result.adversarial - images).flatten(1).norm(dim=1)
    torch.testing.assert_close(result.l2, l2)
    assert (l2 <= attack.eps).all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    if name in BLACK_BOX:
        assert result.queries is not None and (result.queries >= 1).all() and (result.queries <= attack.queries).all()
    else:
        assert result.queries is None


SMALL = {"pgd": lambda: L2PGD(eps=1.0, steps=5), "square": lambda: SquareAttack(eps=1.0, queries=30),
         "hopskipjump": lambda: HopSkipJump(queries=150, init_eval=20)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_attacks_are_reproducible_from_the_generator(digits_model, name):
    model, x, _ = digits_model
    runs = []
    for seed in (1, 2):  # the global state must not matter (ART and foolbox draw from it)
        np.random.seed(seed)
        torch.manual_seed(seed)
        runs.append(SMALL[name]()(model, x[:2], generator=np.random.default_rng(7)))
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    if runs[0].queries is not None:
        assert torch.equal(runs[0].queries, runs[1].queries)


@pytest.mark.parametrize("make", [
    lambda: L2PGD(eps=0.0), lambda: L2PGD(eps=1.0, steps=0), lambda: L2PGD(eps=float("nan")),
    lambda: L2PGD(eps=1.0, restarts=True), lambda: L2PGD(eps=1.0, candidates=np.zeros((2, 1), int)),
    lambda: APGD(eps=-1.0), lambda: APGD(eps=1.0, loss="hinge"), lambda: APGD(eps=1.0, steps=2.5),
    lambda: CarliniWagnerL2(eps=0.0), lambda: CarliniWagnerL2(confidence=-1.0), lambda: CarliniWagnerL2(steps=0),
    lambda: SquareAttack(eps=1.0, queries=2), lambda: SquareAttack(eps=1.0, p_init=1.5),
    lambda: SquareAttack(eps="1"), lambda: HopSkipJump(queries=0), lambda: HopSkipJump(init_eval=200, max_eval=100),
    lambda: HopSkipJump(eps=float("inf")), lambda: HopSkipJump(batch_size=0),
])
def test_bad_hyper_parameters_are_refused(make):
    with pytest.raises(InvalidArgument):
        make()


def test_query_counter_counts_distinct_images():
    calls = []
    counter = QueryCounter(lambda x: calls.append(len(x)) or x.flatten(1)[:, :3])
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    counter(torch.cat([a, b, a]))
    counter(b.double())  # cached (cast to float32 first)
    assert counter.queries == 2 and calls == [2]


def test_query_counter_keys_tell_rows_one_ulp_apart_and_ignore_the_layout():
    """The cache key is the row's float32 bytes' hash: one value moved by one ulp is another query; the same
    values in the channels-last layout (a strided view) are the same query."""
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    nudged = x.clone()
    nudged[1, 2, 7, 7] = torch.nextafter(nudged[1, 2, 7, 7], torch.tensor(2.0))
    keys = [QueryCounter.digest(row) for row in torch.cat([x, nudged])]
    assert len(set(keys)) == 4 and keys[3] == keys[0] and keys[5] == keys[2] and keys[4] != keys[1]
    strided = x.contiguous(memory_format=torch.channels_last)
    assert [QueryCounter.digest(row) for row in strided] == keys[:3]


def test_query_counter_reset_forgets_what_it_was_asked():
    counter = QueryCounter(lambda x: x.flatten(1)[:, :3])
    a = torch.zeros(1, 1, 2, 2)
    counter(a)
    counter.reset()
    counter(a)
    assert counter.queries == 1  # asked again after the reset: counted again


@pytest.mark.parametrize("name", sorted(BLACK_BOX))
def test_a_black_box_attack_counts_every_distinct_image_it_sent_the_clean_one_included(digits_model, name):
    """One image broken within eps (HopSkipJump stops there; out of budget it reports only the queries up to the
    last point it kept): the queries reported are the distinct images the model was asked about, the clean
    image once, though art_classifier's probe asked it first."""
    model, x, _ = digits_model
    seen = set()

    def watched(images: torch.Tensor) -> torch.Tensor:
        seen.update(QueryCounter.digest(row) for row in images.float())
        return model(images)

    result = ATTACKS[name]()(watched, x[:1], judge=model, generator=np.random.default_rng(0))  # judged apart
    assert result.success.item()
    assert result.queries.item() == len(seen)


def test_query_counter_keeps_art_from_walking_the_model(digits_model):
    """ART's predict sets its model's mode on every call; the counter puts the model in eval mode once and
    holds it outside the module tree, so that walk skips the model's modules. Same answers as the model."""
    from fakegradient.attacks._adapters import art_classifier

    model, x, _ = digits_model
    walked = []
    hooked = next(m for m in model.modules() if not list(m.children()))
    original_train = hooked.train
    hooked.train = lambda mode=True: walked.append(mode) or original_train(mode)
    model.train()
    try:
        counter = QueryCounter(model)
        assert not model.training and not hooked.training
        walked.clear()
        classifier = art_classifier(counter, x[:1])
        outputs = [classifier.predict(x[:3].numpy()) for _ in range(3)]
        assert walked == []  # three predicts: not one call reached the model's modules
        with torch.no_grad():
            np.testing.assert_allclose(outputs[-1], model(x[:3]).numpy(), rtol=1e-5, atol=1e-5)
        assert counter.queries == 3  # art_classifier's probe x[0], then x[1] and x[2] (x[0] cached)
    finally:
        del hooked.train
        model.eval()


def test_targets_on_a_protected_model(digits_model):
    """The same PGD (sanity: it breaks the unprotected model) on the paper's protected model, judged by the
    REAL decrypted top-1: on the served outputs, on the rows the file-only attacker recovers, and EOT-style
    over 8 random one-row-of-each-pair hypotheses. Recovered rows = the unprotected model's success."""
    model, x, _ = digits_model
    images = x[:16]
    attack = L2PGD(eps=1.0, steps=20)
    baseline = attack(model, images).success.float().mean().item()
    served, key = protect(model, example_input=x[:2], seed=0)

    def real(z):
        return key.decrypt(served(z))

    weight, bias = head_parameters(served.get_submodule(key.head))
    recovered = recover_real_rows(weight, bias)
    assert recovered.recovered_fraction(key.permutation[: key.n_real]) == 1.0
    rows = attack(OutputRows(served, recovered.real_positions), images, judge=real)
    on_served = attack(served, images, judge=real)
    with torch.no_grad():
        assert torch.equal(on_served.clean_label, model(images).argmax(1))  # judged on the real top-1
    candidates = pair_hypotheses(np.array(_pairs_by_bias(bias.double().numpy())), 8, np.random.default_rng(0))
    eot = L2PGD(eps=1.0, steps=20, candidates=candidates)(served, images, judge=real)
    assert baseline == 1.0
    assert rows.success.float().mean().item() == baseline  # the key is gone: the defense is gone
    # the paper's threat model: gradients of the served top-1 are misleading (measured 2/16 and 5/16)
    assert on_served.success.float().mean().item() < baseline
    assert eot.success.float().mean().item() < baseline


def test_output_rows_and_pair_hypotheses():
    served = torch.nn.Linear(3, 6)
    x = torch.randn(2, 3)
    positions = np.array([4, 0, 2])
    torch.testing.assert_close(OutputRows(served, positions)(x), served(x)[:, positions])
    pairs = np.array([[0, 3], [1, 4], [2, 5]])
    hypotheses = pair_hypotheses(pairs, 50, np.random.default_rng(0))
    assert hypotheses.shape == (50, 3)
    assert all(h[i] in pairs[i] for h in hypotheses for i in range(3))
    assert len({tuple(h) for h in hypotheses}) == 8  # every choice drawn
    with pytest.raises(InvalidArgument):
        pair_hypotheses(pairs[:, :1], 2, np.random.default_rng(0))


def test_budget_cap_projects_float_rounding_and_rejects_the_rest():
    from fakegradient.attacks._adapters import finish

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images = torch.full((3, 1, 2, 2), 0.5)
    r = torch.zeros_like(images)
    r[:, 0, 0, 0] = torch.tensor([0.2 * (1 + 1e-4), 0.3, 0.1])  # rounding over, far over, inside
    result = finish(model, None, images, images + r, torch.zeros(3, dtype=torch.long), eps=0.2)
    assert 0.2 * (1 - 1e-5) <= result.l2[0] <= 0.2
    assert result.l2[1] == 0 and not result.success[1]  # beyond the budget: the clean image, a failure
    torch.testing.assert_close(result.l2[2], torch.tensor(0.1))


@pytest.mark.parametrize("name", ["apgd", "square", "hopskipjump"])
def test_skipping_art_s_identity_standardisation_changes_nothing(digits_model, monkeypatch, name):
    """x − 0 and x / 1 are exact: without them (a copy of every query batch) the ART attacks send the same
    queries and return the same images, bit for bit."""
    from fakegradient.attacks import _adapters, apgd, hopskipjump, square

    model, x, _ = digits_model
    images = x[:3]
    standardised = functools.partial(_adapters.art_classifier, preprocessing=(0.0, 1.0))  # ART's default
    assert _adapters.art_classifier(model, images).preprocessing_operations == []
    assert standardised(model, images).preprocessing_operations != []
    today = ATTACKS[name]()(model, images, generator=np.random.default_rng(1))
    for module in (apgd, hopskipjump, square):
        monkeypatch.setattr(module, "art_classifier", standardised)
    before = ATTACKS[name]()(model, images, generator=np.random.default_rng(1))
    assert torch.equal(today.adversarial, before.adversarial)
    assert (today.queries is None and before.queries is None) or torch.equal(today.queries, before.queries)
