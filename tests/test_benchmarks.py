"""The benchmark scripts' own helpers: what they measure must be what they say."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.runtimes import OnnxRuntime
from fakegradient.integrity import seal_file
from fakegradient.serving.onnx_model import load_model_dir

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _export(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "model.onnx"
    torch.onnx.export(torch.nn.Linear(4, 3), (torch.zeros(1, 4),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_serving_baseline_is_servable(tmp_path):
    """The unprotected baseline of benchmarks/serving.py opens in the server, which refuses unlabelled files
    (the benchmark failed on this once the server checked for a fingerprint)."""
    serving = _module("serving")
    plain = _export(tmp_path / "plain")
    seal_file(plain)
    with pytest.raises(FakeGradientError, match="not a fakegradient-protected model"):
        load_model_dir(plain.parent)
    baseline = _export(tmp_path / "baseline")
    serving.mark_baseline(baseline)
    seal_file(baseline)
    model = load_model_dir(baseline.parent)
    assert model.output_shape == [-1, 3]


def test_serving_prints_ratios_as_the_docs_render_them():
    """benchmarks/serving.py prints per-round ratios with the docs renderer's own spread() (one copy)."""
    serving = _module("serving")
    assert serving.spread([0.81, 0.72, 0.78]) == "0.78 [0.72–0.81]"
    assert serving.spread.__module__ == "render_docs"


def test_serving_cpu_seconds_counts_this_process():
    serving = _module("serving")
    first = serving.cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    second = serving.cpu_seconds(os.getpid())
    assert math.isfinite(first) and 0 < first <= second
    assert math.isnan(serving.cpu_seconds(2**22 + 12345))  # no such process


def test_serving_recording_cost_reports_each_part_and_leaves_the_log_as_it_was():
    import logging

    from fakegradient.serving.metrics import ACCESS_LOGGER

    serving = _module("serving")
    before = logging.getLogger(ACCESS_LOGGER).handlers[:]
    cost = serving.recording_cost(None, None, calls=200, repeats=2)
    assert cost["mode"] == "recording-cost" and cost["calls"] == 200 and cost["repeats"] == 2
    assert cost["metrics_us"] > 0 and cost["writer_us"] > 0 and math.isfinite(cost["log_us"])
    assert logging.getLogger(ACCESS_LOGGER).handlers == before  # its own handler removed again


def test_matrix_speed_log_resumes_what_it_holds_and_refuses_other_settings(tmp_path):
    bench = _module("matrix_speed")
    path = tmp_path / "speed.jsonl"
    settings = {"model": "m", "images": 2, "limits": {"pgd": 1}, "budgets": {"whitebox_l2": 0.3}}
    log = bench.Log(path, dict(settings))
    assert not log.resumed and log.done == {}
    counts = bench.Counter({("original", (1, 3, 8, 8), "fwd"): 5})
    log.add((0, 1, "pgd", "before"), {"wall": 2.0, "roof": 1.0, "counts": counts, "decisions": {"original": [True]},
                                      "queries": {}})
    with path.open("a") as f:
        f.write('{"round": 0, "threads": 1, "attac')  # a line cut by a kill

    recomputed = {**settings, "budgets": {"whitebox_l2": 0.31}}
    again = bench.Log(path, recomputed)
    assert recomputed["budgets"] == {"whitebox_l2": 0.3}  # the logged runs' budget wins over a recomputation
    assert again.resumed and list(again.done) == [(0, 1, "pgd", "before")]
    row = again.done[(0, 1, "pgd", "before")]
    assert row["counts"] == counts and row["decisions"] == {"original": [True]} and row["wall"] == 2.0
    with pytest.raises(ValueError, match="other settings"):
        bench.Log(path, {**settings, "limits": {"pgd": 2}})

    again.add((0, 1, "pgd", "after"), {"wall": 1.0, "roof": 1.0, "counts": counts, "decisions": {}, "queries": {}})
    third = bench.Log(path, dict(settings))  # the result written after the cut line is whole
    assert sorted(third.done) == [(0, 1, "pgd", "after"), (0, 1, "pgd", "before")]


def test_matrix_speed_log_starts_afresh_where_no_header_is_whole_and_names_a_bad_one(tmp_path):
    bench = _module("matrix_speed")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"model": "m", "ima')  # killed while writing its header
    log = bench.Log(empty, {"model": "m", "budgets": {}})
    assert not log.resumed and empty.read_text() == '{"model": "m", "budgets": {}}\n'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="bad.jsonl: its first line is not a settings header"):
        bench.Log(bad, {"model": "m", "budgets": {}})


def test_matrix_speed_attacker_limits():
    bench = _module("matrix_speed")
    assert bench.attacker_limits("pgd=12,square=0", ["pgd", "square", "cw"]) == {"pgd": 12, "square": 0}
    assert bench.attacker_limits("", ["pgd"]) == {}
    for bad in ("nope=3", "pgd=x", "pgd", "pgd=3,pgd=5"):
        with pytest.raises(ValueError, match="--attacker-images"):
            bench.attacker_limits(bad, ["pgd"])


def test_matrix_speed_channels_last_variant_changes_the_weights_layout_not_their_values():
    bench = _module("matrix_speed")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    pipelines = {"original": Normalized(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()}
    example = torch.rand(1, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        bench.use_variant("channels-last", pipelines, example)
        conv = model[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert bench.adaptive.FLUSH_SUBNORMALS and bench.reuse.ENABLED  # otherwise "after"
        x = torch.rand(2, 3, 8, 8)
        assert model[0](x).is_contiguous(memory_format=torch.channels_last)  # runs in that layout
        assert bench.square.art_classifier is bench._adapters.art_classifier
        bench.use_variant("before", pipelines, example)
        assert model[0].weight.is_contiguous() and not bench.reuse.ENABLED
        assert bench.apgd.art_classifier is bench.standardised_classifier  # ART's (x - 0) / 1, as committed
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy, values unchanged
    finally:
        bench.use_variant("after", pipelines, example)


def test_matrix_speed_onnxruntime_variant_answers_calls_without_a_graph_once_exported():
    bench = _module("matrix_speed")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    pipelines = {"original": Normalized(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()}
    example, answers = torch.rand(1, 3, 8, 8), {}
    try:
        bench.use_variant("onnxruntime", pipelines, example, answers)
        first = pipelines["original"].answer
        assert isinstance(first, OnnxRuntime) and bench.reuse.ENABLED
        bench.use_variant("after", pipelines, example, answers)
        assert pipelines["original"].answer is None
        bench.use_variant("onnxruntime", pipelines, example, answers)
        assert pipelines["original"].answer is first  # exported once per thread count
    finally:
        bench.use_variant("after", pipelines, example)


def _matrix_folder(folder: Path, decisions: dict, queries: dict, seconds: dict, table: list[str],
                   shard: int = 2, cpu: float | None = None) -> Path:
    """A minimal evaluate --adaptive folder: 4 photos, one model, scheme "original"; ``seconds`` (attacker →
    [own seconds of each scheme's row]); ``cpu``: each row's own CPU seconds are ``cpu`` × its own seconds
    (None: a run made before they were measured, no column)."""
    folder.mkdir()
    config = {"models": ["m"], "data": "photos", "batch_size": shard}
    (folder / "results.json").write_text(json.dumps({"config": config}))
    photos = [f"p{i}.jpg" for i in range(4)]
    with open(folder / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "method", "image", "defense_success"])
        w.writerows(["m", "original", p, d] for p, d in zip(photos, table))
    with open(folder / "attackers_per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "method", "attacker", "image", "defense_success", "queries"])
        for attacker, decided in decisions.items():
            w.writerows(["m", "original", attacker, p, d, q]
                        for p, d, q in zip(photos, decided, queries.get(attacker, [""] * 4)))
    with open(folder / "attackers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["attacker", "method", "own_seconds"] + ([] if cpu is None else ["own_cpu_seconds"]))
        w.writerows([a, f"scheme{i}", s] + ([] if cpu is None else [cpu * s])
                    for a, row in seconds.items() for i, s in enumerate(row))
    return folder


def _compare(tmp_path: Path, committed: Path, regenerated: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "compare_matrices.py"), str(committed),
               str(regenerated), "--out", str(tmp_path)]
    return subprocess.run(command, check=False, capture_output=True, text=True)


def test_compare_matrices_counts_decisions_tells_the_counter_fix_apart_and_sums_shared_attackers(tmp_path):
    """+1 on a shard's first photo is the counter fix; any other moved count or decision is listed, and a
    first photo without the +1; Table 1's decisions are compared; only attackers in both runs are summed."""
    committed = _matrix_folder(tmp_path / "old", {"square": ["True", "False", "True", "True"],
                                                  "pgd": ["False"] * 4},
                               {"square": ["10", "20", "30", "40"]},
                               {"square": [60.0, 40.0], "pgd": [50.0], "blind": [7.0]},
                               ["True", "True", "False", "False"])
    regenerated = _matrix_folder(tmp_path / "new", {"square": ["True", "False", "True", "True"],
                                                    "pgd": ["False", "True", "False", "False"],
                                                    "apgd-dlr": ["False"] * 4},
                                 {"square": ["11", "21", "30", "40"]},
                                 {"square": [15.0, 5.0], "pgd": [10.0], "apgd-dlr": [5.0]},
                                 ["True", "False", "False", "False"], cpu=1.5)
    assert _compare(tmp_path, committed, regenerated).returncode == 0
    text = (tmp_path / "compare.txt").read_text()
    assert "decisions that differ: 1 of 8" in text and "m / original / pgd / photo 1 (p1.jpg)" in text
    # photos 0 and 2 open a shard: +1 on photo 0 is the fix, +1 on photo 1 is not, photo 2 did not move
    assert "query counts that differ: 2 of 4; 1 of them are +1 on a shard's first image" in text
    assert "square / photo 1 (p1.jpg): 20 -> 21 (defended False -> False)" in text
    assert "did not move (no +1): 1\n  m / original / square / photo 2 (p2.jpg): 30" in text
    assert "Table 1 per-image decisions that differ: 1 of 4" in text
    assert "all                             150.0         30.0   0.20" in text  # square 100 -> 20, pgd 50->10
    assert "regenerated run's own CPU seconds, same attackers: 45.0" in text
    assert "committed run's own CPU" not in text
    assert "only in the regenerated run: apgd-dlr 5.0 s" in text
    assert "only in the committed run: blind 7.0 s" in text
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_compare_matrices_refuses_runs_sharded_differently(tmp_path):
    args = ({"square": ["True"] * 4}, {"square": ["1"] * 4}, {"square": [1.0]}, ["True"] * 4)
    result = _compare(tmp_path, _matrix_folder(tmp_path / "old", *args),
                      _matrix_folder(tmp_path / "new", *args, shard=4))
    assert result.returncode != 0 and "shards differ (2 vs 4 images)" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_matrices_sums_cpu_seconds_only_where_every_timed_row_has_them():
    """A run resumed over shards made before the CPU seconds: no partial sum; untimed rows (naive) are skipped."""
    compare = _module("compare_matrices")
    table = [{"attacker": "pgd", "own_seconds": "2.0", "own_cpu_seconds": "3.0"},
             {"attacker": "pgd", "own_seconds": "1.0", "own_cpu_seconds": "1.5"},
             {"attacker": "naive", "own_seconds": "", "own_cpu_seconds": ""}]
    assert compare.own_seconds(table) == {"pgd": 3.0}
    assert compare.own_seconds(table, "own_cpu_seconds") == {"pgd": 4.5}
    table[1]["own_cpu_seconds"] = ""
    assert compare.own_seconds(table, "own_cpu_seconds") is None
    assert compare.own_seconds([{"attacker": "pgd", "own_seconds": "2.0"}], "own_cpu_seconds") is None


def test_compare_matrices_counts_differing_decisions_and_rows_in_one_run_only():
    compare = _module("compare_matrices")
    old = [{"image": i, "defense_success": d} for i, d in (("a", "True"), ("b", "False"), ("c", "True"))]
    new = [{"image": i, "defense_success": d} for i, d in (("a", "True"), ("b", "True"), ("d", "True"))]
    assert compare.differing(old, new, ("image",)) == ([("b",)], 2, 2)
