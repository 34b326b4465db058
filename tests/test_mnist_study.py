"""The MNIST study's library code: class subsets and restricted heads, Table 2 counts, records read back
from per_image.csv, the training recipes and augmentation, and the scripts' report writers."""

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet

from fakegradient.errors import FakeGradientError, InvalidArgument
from fakegradient.evaluation import mnist
from fakegradient.evaluation.class_study import (
    class_subset,
    counts_heatmap,
    counts_markdown,
    fake_output_counts,
    head_classes,
    rate_text,
    records_from_csv,
    restrict_head,
    write_records_csv,
)
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.records import ImageRecord

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def record(method="fake-gradient", image="a", original=0, plain=10, adversarial=0, l2=1.0, model="m"):
    return ImageRecord(model=model, method=method, image=image, label=original, original_top1=original,
                       served_top1=3, served_top1_fake=method != "original", plain_top1=plain,
                       decrypted_top1=original, adversarial_top1=adversarial, attack_changed_served=True,
                       rho=0.01, l2=l2, linf=0.1, iterations=2)


# -- class subsets and restricted heads -----------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 10, 100, 1000])
def test_class_subset_holds_the_kept_class_and_k_distinct_sorted_classes(k):
    classes = class_subset(k, 417, 1000, np.random.default_rng(3))
    assert len(classes) == k and 417 in classes
    assert np.all(np.diff(classes) > 0) and 0 <= classes[0] and classes[-1] < 1000


def test_class_subset_is_reproducible_per_seed_and_varies_across_seeds():
    a, b = (class_subset(10, 5, 1000, np.random.default_rng(s)) for s in (0, 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, class_subset(10, 5, 1000, np.random.default_rng(1)))


@pytest.mark.parametrize("k, keep", [(0, 1), (11, 1), (3, 10), (3, -1)])
def test_class_subset_rejects_impossible_requests(k, keep):
    with pytest.raises(InvalidArgument):
        class_subset(k, keep, 10, np.random.default_rng(0))


def test_head_classes_random_keeps_the_top1_and_top_takes_the_highest_ranked():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.5, 0.7, 2.9])
    assert head_classes("top", 3, logits, 0, 0).tolist() == [1, 3, 5]
    random = head_classes("random", 3, logits, 0, 4)
    assert 1 in random and len(set(random.tolist())) == 3
    assert np.array_equal(random, class_subset(3, 1, 6, np.random.default_rng([0, 3, 4])))  # documented seeding
    assert head_classes("random", 6, logits, 0, 0).tolist() == list(range(6))
    with pytest.raises(InvalidArgument, match="unknown selection"):
        head_classes("nearest", 3, logits, 0, 0)


def test_restricted_head_outputs_the_chosen_rows_and_leaves_the_model_alone(one_torch_thread):
    torch.manual_seed(0)
    model = TinyNet(12).eval()
    x = torch.rand(5, 3, 16, 16)
    classes = np.array([1, 4, 7, 11])
    restricted = restrict_head(model, classes, x[:1])
    with torch.no_grad():
        full, sub = model(x), restricted(x)
    assert sub.shape == (5, 4) and model.fc.out_features == 12
    torch.testing.assert_close(sub, full[:, classes], rtol=1e-5, atol=1e-5)  # a smaller GEMM, same sums


# -- Table 2 counts ----------------------------------------------------------------------------------------

def test_fake_output_counts_place_each_image_by_real_class_and_winning_output():
    records = [record(original=0, plain=10), record(original=0, plain=10), record(original=0, plain=13),
               record(original=2, plain=19), record(original=1, plain=1)]  # the last: a real output won
    counts = fake_output_counts(records, 10)
    assert counts.shape == (10, 11) and counts.sum() == 5
    assert counts[0, 0] == 2 and counts[0, 3] == 1 and counts[2, 9] == 1 and counts[1, 10] == 1
    lines = counts_markdown(counts)
    assert len(lines) == 12 and "**2**" in lines[2]


def test_fake_output_counts_reject_indices_out_of_range():
    with pytest.raises(InvalidArgument):
        fake_output_counts([record(original=0, plain=20)], 10)


def test_rate_text_carries_k_n_and_the_wilson_interval():
    assert rate_text(20, 20) == "20/20 = 100 % [84–100]"
    assert rate_text(0, 20) == "0/20 = 0 % [0–16]"


# -- per_image.csv round trip ------------------------------------------------------------------------------

def test_records_survive_the_csv_round_trip_with_the_l2_ratio_column(tmp_path):
    records = [record(method="original", image="a", l2=2.0), record(image="a", l2=1.0, plain=11),
               replace(record(image="b"), label=None)]
    path = tmp_path / "per_image.csv"
    write_records_csv(path, records)
    back = records_from_csv(path)
    assert [(r.method, r.image, r.label, r.plain_top1, r.served_top1_fake) for r in back] == \
           [(r.method, r.image, r.label, r.plain_top1, r.served_top1_fake) for r in records]
    assert all(math.isclose(a.l2, b.l2, rel_tol=1e-12) for a, b in zip(back, records))
    header, *rows = path.read_text().splitlines()
    ratios = [row.split(",")[-1] for row in rows]
    assert header.endswith("functionality,defense_success,l2_ratio_to_original")
    assert ratios[0] == "nan" and math.isclose(float(ratios[1]), 0.5) and ratios[2] == "nan"  # b: no original


def test_records_from_a_broken_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "per_image.csv"
    path.write_text("model,method\nm,original\n")
    with pytest.raises(FakeGradientError, match="cannot read records"):
        records_from_csv(path)
    with pytest.raises(FakeGradientError):
        records_from_csv(tmp_path / "absent.csv")


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


# -- the scripts' report writers (from stored files, no training) --------------------------------------------

def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
    recipes = _script("mnist_recipes")
    folder = tmp_path / "resnet18_old_32"
    folder.mkdir()
    write_records_csv(folder / "per_image.csv", _records("resnet18"))
    (folder / "run.json").write_text(json.dumps({
        "arch": "resnet18", "recipe": "old", "size": 32, "held_out_correct": 950, "held_out": 1000,
        "train_seconds": 1.0, "torch_threads": 1, "environment": {"platform": "test", "torch": "x"}}))
    text = recipes.report(tmp_path).read_text()
    assert "| resnet18 | 32×32 | old | 950/1000 = 95 % [93–96] | 15/20 = 75 % [53–89] | 0.80 (n=20) |" in text
    assert "| 5/5 = 100 % [57–100] |" in text  # the lost images land where the unprotected attack's do
    assert "20/20 = 100 %" in text and (tmp_path / "table2_heatmap.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_defense.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seven_mnist_report_from_stored_files(tmp_path):
    seven = _script("seven_mnist")
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
        "command": "python scripts/seven_mnist.py"}))
    text = seven.write_report(tmp_path).read_text()
    assert "not the paper's ImageNet Table 1" in text and "(paper" not in text.lower().replace("the paper's", "")
    assert "| resnet18 | 963/1000 = 96 % [95–97] | 15/20 = 75 % [53–89] | 0.80 |" in text
    aggregates = json.loads((tmp_path / "results.json").read_text())["aggregates"]
    fake = next(a for a in aggregates if a["method"] == "fake-gradient")
    assert (fake["defense_success_pct_k"], fake["defense_success_pct_n"]) == (15, 20)


def test_mnist_direction_measures_each_image_and_reports(tmp_path, one_torch_thread):
    direction = _script("mnist_direction")
    torch.manual_seed(0)
    pipeline = Normalized(TinyNet(10), (0.5,) * 3, (0.25,) * 3).eval()
    rows = direction.directions(pipeline, torch.rand(4, 3, 16, 16), [f"i{i}" for i in range(4)], 0, "tiny")
    assert [r["image"] for r in rows] == ["i0", "i1", "i2", "i3"]
    assert all(-1 - 1e-6 <= r["cos"] <= 1 + 1e-6 and r["l2_ratio"] > 0 for r in rows)
    text = direction.report(rows, tmp_path, "test").read_text()
    assert "| tiny | 4 |" in text and (tmp_path / "per_image.csv").read_text().count("\n") == 5


def test_the_table2_heatmap_is_written_with_one_panel_per_model(tmp_path):
    from PIL import Image

    panels = {"a": np.eye(3, 4, dtype=int) * 5, "b": np.ones((3, 4), int), "c": np.zeros((3, 4), int)}
    counts_heatmap(tmp_path / "table2.png", panels, "Table 2")
    with Image.open(tmp_path / "table2.png") as image:
        assert image.format == "PNG" and image.width > image.height  # three panels side by side
