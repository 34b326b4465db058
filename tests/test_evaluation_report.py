"""``write_report`` into a folder that holds an earlier report: the earlier report's own files that the new one does
not write (figures of another model, say) are removed, listed in ``.report-files.json``; no other file is touched."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fakegradient.data import Sample
from fakegradient.evaluation import report
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.report import MANIFEST, write_report
from fakegradient.evaluation.runner import EvaluationResult, environment, evaluate_model


def test_a_new_report_removes_the_earlier_reports_figures_and_nothing_else(digits_model, tmp_path):
    model, x, y = digits_model
    samples = [Sample(Path(f"digit_{i}.png"), int(label)) for i, label in enumerate(y[:4])]
    config = EvaluationConfig(models=["digits"], methods=["original", "fake-gradient"], seed=0, timing_repeats=2)
    evaluation = evaluate_model("alpha", Normalized(model, (0.0,), (1.0,)), x[:4], samples, config, progress=False)
    mine = {"notes.md": b"my notes", "fig_mine.png": b"my figure", "data.csv": b"a,b", "sub/fig6_alpha.png": b"x"}
    for name, content in mine.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)

    first = write_report(EvaluationResult(config, [evaluation], [], environment()), tmp_path)
    assert (tmp_path / "fig6_alpha.png").is_file()
    renamed = dataclasses.replace(evaluation, name="beta")
    second = write_report(EvaluationResult(config, [renamed], [], environment()), tmp_path)

    assert (tmp_path / "fig6_beta.png").is_file() and not (tmp_path / "fig6_alpha.png").exists()
    assert {p.name for p in second} == {p.name for p in first} - {"fig6_alpha.png"} | {"fig6_beta.png"}
    assert all((tmp_path / name).read_bytes() == content for name, content in mine.items())  # untouched
    left = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert left == {p.name for p in second} | set(mine) | {MANIFEST}
    assert json.loads((tmp_path / MANIFEST).read_text()) == sorted(p.name for p in second)


@pytest.mark.parametrize("listed", [["../outside.csv", "/tmp/x.csv", "sub/fig1.png", ".shards", "notes.md",
                                     "key.json", "model.onnx", ""], {"report.md": 1}, "report.md"], ids=str)
def test_a_damaged_or_forged_list_removes_nothing_else(tmp_path, monkeypatch, listed):
    out = tmp_path / "out"
    for name in ("notes.md", "key.json", "model.onnx", "sub/fig1.png", ".shards/run.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    (tmp_path / "outside.csv").write_text("outside")
    (out / MANIFEST).write_text(json.dumps(listed))
    monkeypatch.setattr(report, "_write_all", lambda result, folder, title: [])
    write_report(None, out)
    assert (tmp_path / "outside.csv").is_file()
    assert all((out / name).is_file() for name in ("notes.md", "key.json", "model.onnx", "sub/fig1.png",
                                                   ".shards/run.json"))


def test_an_unreadable_list_is_no_list(tmp_path, monkeypatch):
    (tmp_path / "report.md").write_text("an earlier report, before lists were kept")
    (tmp_path / MANIFEST).write_text("[" * 100_000)
    monkeypatch.setattr(report, "_write_all", lambda result, folder, title: [])
    write_report(None, tmp_path)
    assert (tmp_path / "report.md").is_file() and json.loads((tmp_path / MANIFEST).read_text()) == []


def test_table1_pairs_each_scheme_with_the_original_and_each_control_with_fake_gradient(digits_model, tmp_path):
    model, x, y = digits_model
    samples = [Sample(Path(f"digit_{i}.png"), int(label)) for i, label in enumerate(y[:6])]
    config = EvaluationConfig(models=["digits"], methods=["original", "fake-gradient", "scaled-copy"], seed=0,
                              timing_repeats=2)
    evaluation = evaluate_model("alpha", Normalized(model, (0.0,), (1.0,)), x[:6], samples, config, progress=False)
    write_report(EvaluationResult(config, [evaluation], [], environment()), tmp_path)

    rows = json.loads((tmp_path / "results.json").read_text())["paired"]["defense_success"]
    assert [(r["a"], r["b"]) for r in rows] == [("fake-gradient", "original"), ("scaled-copy", "original"),
                                                ("scaled-copy", "fake-gradient")]
    outcome = {(r.method, r.image): r.defense_success for r in evaluation.records}
    for r in rows:
        assert r["pairs"] == 6
        assert r["only_a"] == sum(outcome[r["a"], i] and not outcome[r["b"], i] for i in {s for _, s in outcome})
    assert "## Paired tests of defense success" in (tmp_path / "report.md").read_text()
