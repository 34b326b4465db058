"""studies.mnist (the data, recipes, augmentation, training) and the MNIST studies' report writers, from
stored files (no training)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TinyNet
from helpers import image_record as record

from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.pipeline import Normalized
from studies import mnist, mnist_direction, mnist_recipes, seven_mnist
from studies.kit import write_records_csv

# -- recipes, augmentation, training -----------------------------------------------------------------------

def test_the_old_recipe_is_the_h200_runs_and_unknown_recipes_are_refused():
    old = mnist.recipe("old")
    assert (old.epochs, old.lr_for("resnet18"), old.lr_for("vgg11"), old.augment, old.with_replacement) == \
           (4.0, 1e-3, 1e-4, False, True)
    with pytest.raises(InvalidArgument, match="unknown recipe"):
        mnist.recipe("longer")


def test_augment_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(6, 3, 32, 32)
    a = mnist.augment(x, torch.Generator().manual_seed(1))
    b = mnist.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 + 1e-6
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same computation twice
    assert not torch.allclose(a, x, atol=1e-3)


def test_to_pixels_and_split():
    x = np.zeros((3, 28, 28), np.uint8)
    x[:, 10:18, 10:18] = 255
    t = mnist.to_pixels(x, 32)
    assert t.shape == (3, 3, 32, 32) and 0 <= t.min() and t.max() <= 1 and torch.equal(t[:, 0], t[:, 2])
    train, held = mnist.split(5000, 0)
    assert len(train) == mnist.TRAIN and len(held) == mnist.HELD_OUT and not set(train) & set(held)


@pytest.mark.parametrize("name", ["old", "strong"])
def test_each_recipe_learns_a_separable_task(name, one_torch_thread):
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) * 0.2
    y = torch.arange(64) % 2
    x[y == 1, :, :8] += 0.7  # class 1: a bright upper half (survives the small affine maps)
    pipeline = Normalized(TinyNet(2), (0.5,) * 3, (0.25,) * 3)
    spec = replace(mnist.recipe(name), epochs=40, lr=1e-2)
    mnist.train(pipeline, x, y, spec, "tiny", batch=16, generator=torch.Generator().manual_seed(0), progress=False)
    assert mnist.correct(pipeline, x, y) >= 60


# -- the studies' report writers (from stored files, no training) ------------------------------------------

def _records(model):
    out = []
    for i in range(20):
        c = i % 10
        out.append(record(method="original", image=f"d{i}", original=c, plain=c, adversarial=(c + 1) % 10,
                          model=model, l2=1.0))
        out.append(record(image=f"d{i}", original=c, plain=10 + c, adversarial=c if i < 15 else (c + 1) % 10,
                          model=model, l2=0.8))
        out.append(record(method="random-weight", image=f"d{i}", original=c, plain=c, adversarial=(c + 1) % 10,
                          model=model, l2=1.0))
    return out


def test_mnist_recipes_report_from_run_folders(tmp_path):
    folder = tmp_path / "resnet18_old_32"
    folder.mkdir()
    write_records_csv(folder / "per_image.csv", _records("resnet18"))
    (folder / "run.json").write_text(json.dumps({
        "arch": "resnet18", "recipe": "old", "size": 32, "held_out_correct": 950, "held_out": 1000,
        "train_seconds": 1.0, "torch_threads": 1, "environment": {"platform": "test", "torch": "x"}}))
    text = mnist_recipes.report(tmp_path).read_text()
    assert "| resnet18 | 32×32 | old | 950/1000 = 95 % [93–96] | 15/20 = 75 % [53–89] | 0.80 (n=20) |" in text
    assert "| 5/5 = 100 % [57–100] |" in text  # the lost images land where the unprotected attack's do
    assert "20/20 = 100 %" in text and (tmp_path / "table2_heatmap.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_defense.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seven_mnist_report_from_stored_files(tmp_path):
    write_records_csv(tmp_path / "per_image.csv", _records("resnet18"))
    timing = {"median_s": 0.001, "q1_s": 0.001, "q3_s": 0.002}
    size = {"parameters": 10, "bytes": 40}
    (tmp_path / "results.json").write_text(json.dumps({
        "config": {"seed": 0, "candidates": 10, "overshoot": 0.02, "max_iter": 50, "scale": 20.0},
        "environment": {"cuda": "none", "torch": "x", "torchvision": "y", "python": "3"},
        "overhead": {"resnet18": {"size": {m: size for m in ("original", "fake-gradient", "random-weight")},
                                  "time": {m: timing for m in ("original", "fake-gradient", "random-weight")}}}}))
    (tmp_path / "seven_mnist.json").write_text(json.dumps({
        "command_args": {"size": 64, "epochs": 4.0}, "training": {"resnet18": {"test_accuracy": 0.963}},
        "command": "python -m studies.seven_mnist"}))
    text = seven_mnist.write_report(tmp_path).read_text()
    assert "not the paper's ImageNet Table 1" in text and "(paper" not in text.lower().replace("the paper's", "")
    assert "| resnet18 | 963/1000 = 96 % [95–97] | 15/20 = 75 % [53–89] | 0.80 |" in text
    aggregates = json.loads((tmp_path / "results.json").read_text())["aggregates"]
    fake = next(a for a in aggregates if a["method"] == "fake-gradient")
    assert (fake["defense_success_pct_k"], fake["defense_success_pct_n"]) == (15, 20)


def test_mnist_direction_measures_each_image_and_reports(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    pipeline = Normalized(TinyNet(10), (0.5,) * 3, (0.25,) * 3).eval()
    rows = mnist_direction.directions(pipeline, torch.rand(4, 3, 16, 16), [f"i{i}" for i in range(4)], 0, "tiny")
    assert [r["image"] for r in rows] == ["i0", "i1", "i2", "i3"]
    assert all(-1 - 1e-6 <= r["cos"] <= 1 + 1e-6 and r["l2_ratio"] > 0 for r in rows)
    mnist_direction.store(rows, tmp_path, "test")
    text = mnist_direction.report(tmp_path).read_text()
    assert "| tiny | 4 |" in text and (tmp_path / "per_image.csv").read_text().count("\n") == 5
    assert "Command: `test`" in text


def _stored_seven(tmp_path, records, archs):
    write_records_csv(tmp_path / "per_image.csv", records)
    timing = {"median_s": 0.001, "q1_s": 0.001, "q3_s": 0.002}
    size = {"parameters": 10, "bytes": 40}
    methods = ("original", "fake-gradient", "random-weight")
    (tmp_path / "results.json").write_text(json.dumps({
        "config": {"seed": 0, "candidates": 10, "overshoot": 0.02, "max_iter": 50, "scale": 20.0},
        "environment": {"cuda": "none", "torch": "x", "torchvision": "y", "python": "3"},
        "overhead": {a: {"size": dict.fromkeys(methods, size), "time": dict.fromkeys(methods, timing)}
                     for a in archs}}))
    (tmp_path / "seven_mnist.json").write_text(json.dumps({
        "command_args": {"size": 64}, "training": {a: {"test_accuracy": 0.96} for a in archs},
        "command": "python -m studies.seven_mnist"}))


def _sized(model, l2, linf):
    return [replace(r, l2=l2, linf=linf, rho=l2 / 34.0) for r in _records(model)]


def test_seven_mnist_report_flags_large_and_sub_grey_level_perturbations(tmp_path):
    """‖r‖∞ ≥ 0.25 is called not small; ‖r‖∞ < 1/255 is called below one grey level, with the ‖r‖₂ factor;
    ‖x‖₂ = ‖r‖₂/ρ is shown so that an architecture measured in another space would stand out."""
    _stored_seven(tmp_path, _sized("vgg11", 5.0, 0.5) + _sized("mobilenet_v2", 0.01, 0.0008)
                  + _sized("resnet18", 1.5, 0.1), ["vgg11", "mobilenet_v2", "resnet18"])
    text = seven_mnist.write_report(tmp_path).read_text()
    assert "| vgg11 | 5 [5–5] | 0.5 | 0.1471 | 34.0 | 0/20 = 0 % [0–16] | 20/20 = 100 % [84–100] |" in text
    assert "**Not small perturbations**: the median ‖r‖∞ is 0.50 (vgg11) of the [0, 1] pixel range" in text
    assert ("**mobilenet_v2** needs a median ‖r‖∞ of 0.0008, below one 8-bit grey level (1/255 ≈ 0.0039): "
            "150–500× smaller median ‖r‖₂") in text
    assert "‖x‖₂ = ‖r‖₂/ρ agrees for every architecture" in text
    assert "**resnet18** needs" not in text and "Why the perturbation sizes differ" not in text  # none stored


def _sensitivity_record(margin, grad, l2, accuracies, low=0, gain=1.0):
    local = {"margin_median": margin, "grad_norm_median": grad, "linear_estimate_median": margin / grad,
             "deepfool_l2_median": l2, "deepfool_linf_median": l2 / 10, "deepfool_fooled": 4}
    return {"arch": "a", "recipe": "old", "size": 64, "seed": 0, "device": "cpu", "torch": "x", "n": 4,
            "held_out": 1000, "command": "python -m studies.seven_mnist --sensitivity a", "capped_eps": 1e-3,
            "accuracy": dict(zip(("eval", "batch_statistics", "recalibrated", "bn_eps_capped"), accuracies)),
            "eval": local, "recalibrated": local, "bn_eps_capped": local,
            "batchnorm": {"layers": 2, "channels": 100, "low_variance_channels": low, "low_variance": 1e-3,
                          "max_gain": gain}}


def test_seven_mnist_report_renders_the_stored_sensitivity(tmp_path):
    _stored_seven(tmp_path, _sized("mobilenet_v2", 0.01, 0.0008) + _sized("resnet18", 1.5, 0.1),
                  ["mobilenet_v2", "resnet18"])
    (tmp_path / "sensitivity_mobilenet_v2.json").write_text(json.dumps(
        _sensitivity_record(5.0, 400.0, 0.013, (0.88, 0.88, 0.875, 0.11), low=3000, gain=118)))
    (tmp_path / "sensitivity_resnet18.json").write_text(json.dumps(
        _sensitivity_record(10.0, 8.0, 1.3, (0.96, 0.96, 0.96, 0.95))))
    text = seven_mnist.write_report(tmp_path).read_text()
    assert "| mobilenet_v2 | 4 | 88.0 % | 88.0 % | 87.5 % | 11.0 % | 5.00 | 400 | 0.0125 | 0.013 | 0.013 | " \
           "3000/100 | 118 |" in text
    assert "mobilenet_v2's median margin is 0.5× resnet18's but its median input gradient is 50× resnet18's" in text
    assert "running statistics are not the cause" in text
    assert "drops mobilenet_v2's accuracy from 88.0 % to 11.0 %" in text
    assert "(This retrain's median ‖r‖₂ is 0.013 on 4 digits; the stored run's 0.01 on 20.)" in text
    # stale statistics would not be called harmless
    (tmp_path / "sensitivity_mobilenet_v2.json").write_text(json.dumps(
        _sensitivity_record(5.0, 400.0, 0.013, (0.60, 0.88, 0.88, 0.11))))
    assert "running statistics are not the cause" not in seven_mnist.write_report(tmp_path).read_text()
