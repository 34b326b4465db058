"""The query-only attacker's discovery (attacks/query_only.py): from uniform-noise images it makes itself, it
finds the real served outputs of a small model protected with the paper's scheme (and the controls whose fakes
win), with few queries; its registry rows do not apply to a scheme serving features."""

import numpy as np
import pytest
import torch

from fakegradient import protect
from fakegradient.attacks.query_only import believed_real, discover_real_outputs, separation
from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.stages.attackers import ATTACKERS, Context, Target
from fakegradient.schemes import Capabilities, get

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recording(torch.nn.Module):
    """The served model, keeping every image it is sent."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sent = model, []

    def forward(self, x):
        self.sent.append(x.clone())
        return self.model(x)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["fake-gradient", "scaled-copy", "random-decoy"])
def test_noise_alone_finds_every_real_output_when_fakes_win(digits_model, method, seed):
    model, x, _ = digits_model
    served, key = protect(model, method=method, example_input=x[:2], seed=seed)
    recording = Recording(served)
    found = discover_real_outputs(recording, (1, 8, 8), get(method).capabilities.fakes_win, seed=seed)
    np.testing.assert_array_equal(found.real_positions, np.sort(key.permutation[: key.n_real]))
    assert found.recovered_fraction(key.permutation[: key.n_real]) == 1.0
    sent = torch.cat(recording.sent)
    assert len(sent) == found.queries <= 16  # measured: 4-8 on this model
    assert not any(torch.equal(image, photo) for image in sent for photo in x)  # only its own noise
    assert "separation" in found.oracle


@pytest.mark.parametrize("method", ["random-weight", "fake-gradient-hardened"])
def test_noise_finds_most_real_outputs_when_fakes_do_not_win(digits_model, method):
    """Fakes that do not win vary less on noise than the trained real rows: far above chance (50 %)."""
    model, x, _ = digits_model
    for seed in range(3):
        served, key = protect(model, method=method, example_input=x[:2], seed=seed)
        found = discover_real_outputs(served, (1, 8, 8), fakes_win=False, seed=seed)
        assert found.recovered_fraction(key.permutation[: key.n_real]) >= 0.9  # measured 0.9-1.0, seeds 0-5
        assert found.queries <= 256


def test_the_real_outputs_are_the_least_spread_when_fakes_win_else_the_most():
    g = np.random.default_rng(0)
    outputs = g.normal(size=(6, 8))
    outputs[:, [1, 4, 5, 6]] *= 10  # four positions vary 10x more
    np.testing.assert_array_equal(believed_real(outputs, fakes_win=True), [0, 2, 3, 7])
    np.testing.assert_array_equal(believed_real(outputs, fakes_win=False), [1, 4, 5, 6])
    assert separation(outputs) > 5 and separation(g.normal(size=(200, 8))) < 1.5


def test_discovery_stops_when_two_rounds_agree_and_at_its_limit():
    calls = []

    def constant_spread(x):  # position 0 always the most spread: stable from the first two rounds
        calls.append(len(x))
        return torch.stack([10 * x.flatten(1)[:, 0], x.flatten(1)[:, 1]], dim=1)

    found = discover_real_outputs(constant_spread, (1, 2, 2), fakes_win=True)
    assert (found.queries, calls) == (4, [2, 2]) and found.real_positions.tolist() == [1]
    calls.clear()
    flip = iter(range(100))

    def unstable(x):  # the chosen position alternates every round: stops at the limit
        i = next(flip)
        calls.append(len(x))
        scale = torch.tensor([10.0, 1.0]) if i % 2 else torch.tensor([1.0, 10.0])
        return x.flatten(1)[:, :2] * scale * (i + 1) ** 3
    found = discover_real_outputs(unstable, (1, 2, 2), fakes_win=True, limit=16)
    assert found.queries == sum(calls) == 16 and calls == [2, 2, 4, 8]
    with pytest.raises(InvalidArgument):
        discover_real_outputs(unstable, (1, 2, 2), fakes_win=True, first=1)


@pytest.mark.parametrize("name", ["query-only-square", "query-only-hopskipjump"])
def test_the_query_only_rows_do_not_apply_to_served_features(name):
    target = Target("split", served=None, secret=None, head=None, capabilities=Capabilities(serves="features"))
    ctx = Context(bench=None, target=target, images=torch.zeros(1, 1, 2, 2), start=0, budgets={}, truth=None)
    assert ATTACKERS[name].key_recovery and ATTACKERS[name].budget == "blackbox_l2"
    assert ATTACKERS[name].run(ctx) is None
