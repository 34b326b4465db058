"""Evaluation: metrics from per-image records (known answers), skipped models, a small end-to-end run."""

import json
import platform
from pathlib import Path

import pytest
import torch

from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.records import ImageRecord, aggregate, aggregate_by, fake_class_table
from fakegradient.evaluation.report import write_report
from fakegradient.evaluation.runner import EvaluationResult, environment, evaluate, evaluate_model
from fakegradient.machine import cpu_model


def record(**overrides):
    base = dict(model="m", method="fake-gradient", image="a.jpg", label=3, original_top1=3, served_top1=17,
                served_top1_fake=True, plain_top1=13, decrypted_top1=3, adversarial_top1=3,
                attack_changed_served=True, rho=0.001, l2=1.0, linf=0.1, iterations=2)
    return ImageRecord(**(base | overrides))


def test_metrics_known_answers():
    records = [
        record(),  # fake output, functional, defended
        record(image="b", served_top1_fake=False, adversarial_top1=4, rho=0.003, iterations=4),  # attack won
        record(image="c", decrypted_top1=5, label=5, adversarial_top1=5, rho=0.002),  # broken functionality
        record(image="d", attack_changed_served=False, rho=0.010, label=None),
    ]
    a = aggregate(records)
    assert a["images"] == 4
    assert a["fake_output_pct"] == 75.0
    assert a["original_functionality_pct"] == 75.0
    # defense success compares with the ORIGINAL clean top-1: c's adversarial 5 != original 3
    assert a["defense_success_pct"] == 50.0
    assert a["attack_changed_served_pct"] == 75.0
    assert a["rho_mean"] == pytest.approx(0.004)
    assert a["rho_median"] == pytest.approx(0.0025)
    assert a["iterations_mean"] == 2.5
    assert a["original_accuracy_pct"] == pytest.approx(100 * 2 / 3)  # c's label 5 != original 3; d unlabelled


def test_original_defense_is_100_minus_attack_success():
    records = [record(method="original", served_top1_fake=False, adversarial_top1=t, attack_changed_served=t != 3)
               for t in (3, 4, 5, 3, 6)]
    a = aggregate(records)
    assert a["defense_success_pct"] == 100 - a["attack_changed_served_pct"] == 40.0


def test_grouping_and_table2():
    records = [record(model="x"), record(model="y", method="original"), record(model="x", image="q", plain_top1=13)]
    groups = aggregate_by(records)
    assert list(groups) == [("x", "fake-gradient"), ("y", "original")] and groups[("x", "fake-gradient")]["images"] == 2
    assert fake_class_table(records[::2], n_real=10) == {3: [("a.jpg", 13), ("q", 13)]}
    with pytest.raises(ValueError):
        aggregate([])


def test_missing_weights_are_reported_as_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    config = EvaluationConfig(models=["resnet18", "nope_net"], limit=1)
    result = evaluate(config, progress=False)
    assert result.evaluations == []
    assert [s["model"] for s in result.skipped] == ["resnet18", "nope_net"]
    assert "resnet18-f37072fd.pth" in result.skipped[0]["reason"]
    assert "unknown model" in result.skipped[1]["reason"]
    write_report(result, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Skipped models" in report and "resnet18" in report


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        EvaluationConfig(methods=["nope"])
    with pytest.raises(ValueError, match="limit"):
        EvaluationConfig(limit=0)


def test_small_end_to_end(digits_model, tmp_path):
    model, x, y = digits_model
    images = torch.nn.functional.interpolate(x[:12], size=16)  # (12, 1, 16, 16)
    samples = [Sample(Path(f"digit_{i}.png"), int(label)) for i, label in enumerate(y[:12])]
    config = EvaluationConfig(models=["digits"], seed=0, batch_size=5, timing_repeats=3)
    pipeline = Normalized(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), model), (0.0,), (1.0,))
    evaluation = evaluate_model("digits", pipeline, images, samples, config, progress=False)
    by_method = aggregate_by(evaluation.records)
    original = by_method[("digits", "original")]
    fg = by_method[("digits", "fake-gradient")]
    assert original["defense_success_pct"] == 0.0  # unbounded DeepFool always wins on an undefended model
    assert fg["fake_output_pct"] == 100.0 and fg["original_functionality_pct"] == 100.0
    assert by_method[("digits", "random-weight")]["original_functionality_pct"] == 100.0
    assert len(evaluation.records) == 36
    result = EvaluationResult(config, [evaluation], [], environment())
    written = write_report(result, tmp_path)
    names = {p.name for p in written}
    assert {"report.md", "results.json", "per_image.csv", "fig6_digits.png", "fig7_size.png", "fig8_time.png"} <= names
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["seed"] == 0 and payload["environment"]["torch"] == torch.__version__
    assert payload["evaluation_seeds"] == {"digits": 0}
    assert len((tmp_path / "per_image.csv").read_text().strip().splitlines()) == 37
    report = (tmp_path / "report.md").read_text()
    assert "| Defense Success Rate (%) | Fake Gradient |" in report
    # issue 11: rates with n and Wilson intervals, ρ in both spaces, the per-image ‖r‖ ratio
    assert "Wilson score" in report and "0 [0–24] n=12" in report and "ρ normalised" in report
    fg_json = next(a for a in payload["aggregates"] if a["method"] == "fake-gradient")
    assert fg_json["defense_success_pct_n"] == 12 and len(fg_json["defense_success_pct_ci95"]) == 2
    assert fg_json["l2_ratio_n"] == 12 and fg_json["rho_normalized_mean"] > 0
    assert payload["data"]["distinct_photos"] == 12 and "Wilson" in payload["intervals"]
    header = (tmp_path / "per_image.csv").read_text().splitlines()[0].split(",")
    assert {"rho_normalized", "l2_ratio_to_original"} <= set(header)


def test_report_without_the_original_method(digits_model, tmp_path):
    """Figures 7/8 compare with the unprotected model even when only protected methods are attacked."""
    model, x, y = digits_model
    samples = [Sample(Path(f"digit_{i}.png"), int(label)) for i, label in enumerate(y[:4])]
    config = EvaluationConfig(models=["digits"], methods=["fake-gradient"], seed=0, timing_repeats=2)
    evaluation = evaluate_model("digits", Normalized(model, (0.0,), (1.0,)), x[:4], samples, config, progress=False)
    assert set(evaluation.overhead["size"]) == {"original", "fake-gradient"}
    write_report(EvaluationResult(config, [evaluation], [], environment()), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Figures 7 and 8" in report and report.count("| digits | ") >= 2


def test_the_environment_names_the_cpu(tmp_path):
    """Floats and timings depend on the CPU: every evaluation records its model name (the first in cpuinfo), or
    what platform knows where cpuinfo has none (ARM) or there is no cpuinfo."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: Other\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert cpu_model(cpuinfo) == platform.processor()
    assert cpu_model(tmp_path / "absent") == platform.processor()
    assert environment()["cpu"] == cpu_model()
