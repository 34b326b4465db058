"""The fused DeepFool loop (the check's forward is the next gradient forward) computes what the plain
loop computes: a gradient forward for the step and a no_grad forward for the check per iteration."""

import pytest
import torch

from fakegradient.attacks.deepfool import DeepFool, _rowwise_grads


def plain_deepfool(attack: DeepFool, model, images):
    """The straightforward batched DeepFool (the previous implementation): (x_adv, success, iterations, adv_label)."""
    x0 = images.detach()
    with torch.no_grad():
        logits = model(x0)
    k = min(attack.candidates, logits.shape[1])
    classes = logits.argsort(dim=1, descending=True)[:, :k]
    label = classes[:, 0]
    r_tot, x_adv, adv_label = torch.zeros_like(x0), x0.clone(), label.clone()
    iterations = torch.zeros(len(x0), dtype=torch.long)
    active = torch.arange(len(x0))
    for _ in range(attack.max_iter):
        if active.numel() == 0:
            break
        x = x_adv[active].requires_grad_(True)
        cand = model(x).gather(1, classes[active])
        diffs = cand[:, 1:] - cand[:, :1]
        grads = _rowwise_grads(diffs, x, batched=False)
        w_norm = grads.flatten(2).norm(dim=2)
        dist = diffs.detach().abs() / w_norm
        best = dist.nan_to_num(nan=float("inf")).argmin(dim=1)
        rows = torch.arange(len(x))
        scale = (dist[rows, best] + attack.eps) / w_norm[rows, best]
        r_tot[active] += scale.view(-1, 1, 1, 1) * grads[rows, best]
        x_new = x0[active] + (1 + attack.overshoot) * r_tot[active]
        if attack.clip is not None:
            x_new = x_new.clamp(*attack.clip)
        x_adv[active] = x_new
        iterations[active] += 1
        with torch.no_grad():
            now = model(x_new).argmax(dim=1)
        adv_label[active] = now
        active = active[now == label[active]]
    return x_adv, adv_label != label, iterations, adv_label


@pytest.mark.parametrize("attack", [DeepFool(), DeepFool(clip=(0.0, 1.0)), DeepFool(max_iter=2, overshoot=0.0)],
                         ids=["default", "clip", "max_iter-reached"])
def test_fused_loop_equals_the_plain_loop(digits_model, attack):
    model, x, _ = digits_model
    x = x[:120]
    ours = attack(model, x)
    x_adv, success, iterations, adv_label = plain_deepfool(attack, model, x)
    # same batch sizes for every forward, hence the same kernels: equal up to float rounding
    assert torch.equal(ours.iterations, iterations)
    assert torch.equal(ours.success, success)
    assert torch.equal(ours.adversarial_label, adv_label)
    assert torch.allclose(ours.adversarial, x_adv, atol=1e-6, rtol=0)
    if attack.max_iter == 2:
        assert not success.all()  # the max_iter path is exercised


@pytest.mark.parametrize("channels_last", [True, False])
def test_memory_layout_changes_only_float_rounding(tiny, channels_last):
    """3-channel images, where channels_last is a different layout (for 1 channel it is the same)."""
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    attack = DeepFool(channels_last=channels_last)
    ours = attack(tiny, x)
    x_adv, success, iterations, adv_label = plain_deepfool(attack, tiny, x)
    assert ours.adversarial.is_contiguous()  # returned in the caller's layout
    assert torch.equal(ours.iterations, iterations) and torch.equal(ours.success, success)
    assert torch.allclose(ours.adversarial, x_adv, atol=1e-5, rtol=0)  # other kernels: float rounding only
