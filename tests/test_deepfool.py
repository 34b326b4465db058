"""Our batched DeepFool: succeeds on undefended models, stops per sample, agrees with foolbox."""

import foolbox as fb
import pytest
import torch

from fakegradient.attacks.base import norms
from fakegradient.attacks.deepfool import DeepFool, _rowwise_grads


def test_unbounded_deepfool_fools_an_undefended_model(digits_model):
    model, x, _ = digits_model
    result = DeepFool()(model, x[:100])
    assert result.success.all()
    with torch.no_grad():  # the attack judged each sample in a smaller batch: another kernel, same decision
        again = model(result.adversarial)
    top2 = again.topk(2).values
    decided = top2[:, 0] - top2[:, 1] > 1e-4
    assert decided.float().mean() > 0.9
    assert torch.equal(again.argmax(1)[decided], result.adversarial_label[decided])
    assert (result.adversarial_label != result.clean_label).all()
    assert (norms(result.perturbation(x[:100]), x[:100])["rho"] < 1).all()  # small, not a destroyed image


def test_stops_per_sample(digits_model):
    model, x, _ = digits_model
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, inp):
            calls.append(inp.shape[0])
            return self.inner(inp)

    result = DeepFool()(Counting(), x[:64])
    iterations = result.iterations
    assert iterations.min() >= 1 and iterations.max() > iterations.min()  # samples need different counts
    # each forward passes only the samples still being attacked; the check of iteration i is the gradient
    # forward of iteration i + 1, and only when samples finish do the survivors need a forward of their own
    active = [(iterations > i).sum().item() for i in range(iterations.max().item() + 1)]
    expected = [active[0]]
    for now, then in zip(active, active[1:]):
        expected += [now] + ([then] if 0 < then < now else [])
    assert calls == expected
    assert len(calls) < 2 * iterations.max().item() + 1  # fewer than the step + check forwards per iteration
    # a finished sample is frozen: re-running it alone gives the same perturbation
    alone = DeepFool()(model, x[:1])
    assert torch.allclose(alone.adversarial, result.adversarial[:1], atol=1e-5)


def test_max_iter_bounds_the_attack(digits_model):
    model, x, _ = digits_model
    result = DeepFool(max_iter=1, overshoot=0.0)(model, x[:50])
    assert (result.iterations == 1).all()
    assert not result.success.all()  # one linearised step without overshoot rarely suffices for all


@pytest.mark.parametrize("batched", [True, False])
def test_rowwise_gradients_equal_per_column_gradients(digits_model, batched):
    model, x, _ = digits_model
    xs = x[:5].clone().requires_grad_(True)
    out = model(xs)[:, :4]
    grads = _rowwise_grads(out, xs, batched=batched)
    assert grads.shape == (5, 4, *xs.shape[1:])
    for j in range(4):
        (single,) = torch.autograd.grad(model(xs)[:, j].sum(), xs)
        assert torch.allclose(grads[:, j], single, atol=1e-6)


def test_agrees_with_foolbox(digits_model):
    model, x, _ = digits_model
    x = x[:200]
    with torch.no_grad():
        labels = model(x).argmax(1)
    ours = DeepFool(candidates=10, overshoot=0.02, max_iter=50, clip=(0.0, 1.0))(model, x)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    _, theirs, theirs_success = attack(fmodel, x, labels, epsilons=None)
    agreement = (ours.success == theirs_success).float().mean().item()
    assert agreement >= 0.95, agreement
    both = ours.success & theirs_success
    ours_l2 = norms(ours.perturbation(x), x)["l2"][both].median()
    theirs_l2 = (theirs - x).flatten(1).norm(dim=1)[both].median()
    assert abs(ours_l2 - theirs_l2) / theirs_l2 < 0.05, (ours_l2, theirs_l2)
