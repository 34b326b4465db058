"""studies.mnist_sensitivity: the margin / input-gradient decomposition of DeepFool's ‖r‖ and the BatchNorm
checks, on small models whose answers are known (CPU, no training)."""

import torch
from torch import nn

from fakegradient.attacks.deepfool import DeepFool
from fakegradient.evaluation.pipeline import Normalized
from studies import mnist_sensitivity as sensitivity

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _linear(seed=0):
    torch.manual_seed(seed)
    return Normalized(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), MEAN, STD).eval()


def test_the_linear_estimate_and_deepfool_are_the_pixel_distance_on_a_linear_model(one_torch_thread):
    """Two classes, linear: the distance to the boundary in *pixels* is margin·std/‖w₁−w₀‖ (the normalisation
    inside the pipeline scales it by std): an r measured in the normalised space, or a gradient taken
    there, would be off by 1/std = 4x."""
    pipeline = _linear()
    x = torch.rand(5, 3, 4, 4)
    w = pipeline.model[1].weight.detach()
    logits = pipeline(x).detach()
    margin = (logits.max(1).values - logits.min(1).values)
    distance = margin * STD[0] / (w[0] - w[1]).norm()
    measured_margin, grad = sensitivity.margins_and_gradients(pipeline, x)
    torch.testing.assert_close(measured_margin, margin, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(measured_margin / grad, distance, rtol=1e-4, atol=1e-6)
    record = sensitivity._local(pipeline, x, DeepFool(overshoot=0.02))
    expected = float(((1 + 0.02) * (distance + 1e-4)).median())  # DeepFool's overshoot and step eps
    assert abs(record["deepfool_l2_median"] - expected) < 1e-3 * expected
    assert abs(record["linear_estimate_median"] - float(distance.median())) < 1e-4 * float(distance.median())
    assert record["deepfool_fooled"] == 5


def _bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    return Normalized(net, MEAN, STD).eval()


def test_recalibrated_recomputes_the_running_statistics_on_the_given_images_only_in_a_copy(one_torch_thread):
    pipeline = _bn_net()
    bn = pipeline.model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(100.0)  # stale statistics
    x = torch.rand(40, 3, 8, 8)
    fixed = sensitivity.recalibrated(pipeline, x, batch=8)  # 5 equal batches: the average of their statistics
    with torch.no_grad():
        pre = pipeline.model[0]((x - pipeline.mean) / pipeline.std)
    per_batch_var = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1) for b in pre.split(8)]).mean(0)
    torch.testing.assert_close(fixed.model[1].running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fixed.model[1].running_var, per_batch_var, rtol=1e-4, atol=1e-6)
    assert float(bn.running_mean[0]) == 5.0 and not fixed.training  # the original is untouched


def test_measure_reports_accuracies_batchnorm_channels_and_gains(one_torch_thread):
    pipeline = _bn_net()
    bn = pipeline.model[1]
    bn.running_var.copy_(torch.tensor([1e-5, 1.0, 1.0, 1.0]))  # one low-variance channel: gain 1/√(2e-5) ≈ 224
    x = torch.rand(12, 3, 8, 8)
    y = torch.arange(12) % 3
    record = sensitivity.measure(pipeline, x[:3], x, y, x)
    assert record["n"] == 3 and record["held_out"] == 12
    assert record["batchnorm"]["layers"] == 1 and record["batchnorm"]["channels"] == 4
    assert record["batchnorm"]["low_variance_channels"] == 1
    assert 200 < record["batchnorm"]["max_gain"] < 250
    assert set(record["accuracy"]) == {"eval", "batch_statistics", "recalibrated", "bn_eps_capped"}
    assert all(0 <= v <= 1 for v in record["accuracy"].values())
    assert float(bn.running_var[0]) < 1e-4 and bn.eps == 1e-5  # measure works on copies
    for part in ("eval", "recalibrated", "bn_eps_capped"):
        assert record[part]["grad_norm_median"] > 0 and record[part]["deepfool_l2_median"] > 0
