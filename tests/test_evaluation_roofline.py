"""evaluation/roofline.py and the matrix's timing table: passes counted equal what the attack made, the
fraction of roofline, and a memoised computation counted once (at the row that ran it) in the total."""

import time
from pathlib import Path

import pytest
import torch

from fakegradient.attacks.pgd import L2PGD
from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.plan import Shard, ShardResult
from fakegradient.evaluation.records import AttackerRecord
from fakegradient.evaluation.report import _timing_table
from fakegradient.evaluation.roofline import Passes, PassTimes, fraction, summary
from fakegradient.evaluation.stages import adaptive
from fakegradient.evaluation.stages.attackers import ATTACKERS
from fakegradient.evaluation.summary import AdaptiveResult, collect_adaptive
from fakegradient.evaluation.workbench import Workbench, served_pipelines
from fakegradient.methods import ORIGINAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS, RESTARTS, B = 3, 2, 2


def test_pgd_passes_are_its_steps_times_restarts(tiny):
    """A budget too small to change any top-1: every restart runs all its steps, each one gradient."""
    served = Normalized(tiny, (0.5,), (0.25,)).eval()
    images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with Passes({"m": served}) as passes:
        result = L2PGD(eps=1e-6, steps=STEPS, restarts=RESTARTS)(served, images)
        counts = summary(passes.counts)
        with passes.paused():
            served(images)
        assert summary(passes.counts) == counts  # paused: not counted
    assert result.iterations.tolist() == [STEPS * RESTARTS] * B
    assert counts["bwd"] == [STEPS * RESTARTS, STEPS * RESTARTS * B]
    assert counts["fwd_grad"] == [STEPS * RESTARTS, STEPS * RESTARTS * B]
    assert counts["fwd"][0] >= 1  # labels and judging, without a graph
    served(images)
    assert summary(passes.counts) == counts  # closed: hooks removed


def test_roofline_is_a_fraction_of_the_attack(tiny):
    served = Normalized(tiny, (0.5,), (0.25,)).eval()
    images = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    times = PassTimes({"m": served})
    with Passes({"m": served}) as passes:
        L2PGD(eps=1e-6, steps=2, restarts=1)(served, images)  # warm-up
        passes.counts.clear()
        begin = time.perf_counter()
        L2PGD(eps=1e-6, steps=STEPS, restarts=RESTARTS)(served, images)
        wall = time.perf_counter() - begin
        with passes.paused():
            roofline = times.seconds(passes.counts)
    assert {(grad, backward) for *_, grad, backward in times.samples} == {(False, False), (True, False), (True, True)}
    assert all(len(v) == 3 for v in times.samples.values())  # every kind ran at least 3 times: 3 timed
    # every backward pass of the attack counted (the roofline's work), its fraction positive: no upper bound, as
    # the attack and the roofline are two timings of a shared machine
    assert sum(n for (_, _, kind), n in passes.counts.items() if kind == "bwd") == STEPS * RESTARTS
    assert 0 < fraction(roofline, wall)
    assert fraction(0.0, wall) is None and fraction(roofline, 0.0) is None
    with pytest.raises(ValueError, match="pass kind"):
        times.cost("m", (1, 3, 16, 16), "sideways")


@pytest.fixture(scope="module")
def matrix(digits_model):
    """PGD, EOT-PGD and the feature-space attack on 2 digits, original and Random Weight (one worker's
    memo, as without Ray): EOT-PGD's original row is PGD's, the feature-space images are computed once."""
    model, x, y = digits_model
    names = ("pgd", "pgd-eot", "feature-space")
    config = EvaluationConfig(models=["digits"], methods=[ORIGINAL, "random-weight"], seed=0, adaptive=True,
                              iterative_steps=STEPS, feature_steps=2, feature_restarts=1)
    original = Normalized(model, (0.0,), (1.0,)).eval()
    samples = [Sample(Path(f"d{i}.png"), int(label)) for i, label in enumerate(y[:B])]
    bench = Workbench(config, original, served_pipelines(original, config, 0, x[:1]), samples, 0, x[:B])
    budgets = {"base_l2": 0.5, "whitebox_l2": 1.0, "blackbox_l2": 2.0, "blackbox_queries": 10.0}
    shards = [Shard("digits", m, 0, B, "adaptive", tuple(sorted(budgets.items()))) for m in config.methods]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adaptive, "ATTACKERS", {n: ATTACKERS[n] for n in names})
        parts = [(s, adaptive.run(bench, s, x[:B], samples)) for s in shards]
    return parts, collect_adaptive(config.methods, [], [], parts, budgets)


def test_shared_computations_are_counted_once(matrix):
    parts, result = matrix
    timing = {(s.method, a): t for s, part in parts for a, t in part.values["timing"].items()}
    pgd = timing[ORIGINAL, "pgd"]
    assert pgd["passes"]["bwd"] == [STEPS, STEPS * B] and pgd["reused"] == []  # one restart, every step
    assert timing[ORIGINAL, "pgd-eot"]["reused"] == ["original/pgd"]
    assert timing[ORIGINAL, "pgd-eot"]["passes"]["bwd"] == [0, 0]
    assert timing["random-weight", "feature-space"]["reused"] == ["original/feature-space"]
    assert timing["random-weight", "feature-space"]["passes"]["bwd"] == [0, 0]
    assert timing[ORIGINAL, "feature-space"]["passes"]["bwd"][0] > 0
    assert timing["random-weight", "pgd-eot"]["passes"]["bwd"][0] == STEPS  # its own EOT loss: attacked for real

    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    assert rows[ORIGINAL, "pgd-eot"]["roofline_fraction"] is None and rows[ORIGINAL, "pgd-eot"]["bwd_calls"] == 0
    for key in ((ORIGINAL, "pgd"), ("random-weight", "pgd-eot"), (ORIGINAL, "feature-space")):
        assert 0 < rows[key]["roofline_fraction"], (key, rows[key])  # timings of a shared machine: no upper bound
        assert rows[key]["reused"] == ""
    own = [r["own_seconds"] for r in rows.values()]
    assert result.distinct_seconds() == pytest.approx(sum(own))
    cpu = [r["own_cpu_seconds"] for r in rows.values()]
    assert result.distinct_seconds("own_cpu_s") == pytest.approx(sum(cpu))
    assert rows[ORIGINAL, "feature-space"]["own_cpu_seconds"] > 0  # CPU time: no bound against wall time here
    shared = [rows[ORIGINAL, "pgd-eot"], rows["random-weight", "feature-space"]]
    # a reused row's seconds column repeats its owner's computation; its own time is the look-up
    assert all(r["own_seconds"] < r["seconds"] for r in shared)
    assert result.distinct_seconds() < sum(r["seconds"] for r in rows.values())


def test_the_timing_table_shows_fractions_and_reuse(matrix):
    _, result = matrix
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    lines = _timing_table(result, rows, [ORIGINAL, "random-weight"], ["pgd", "pgd-eot", "feature-space"])
    text = "\n".join(lines)
    assert "| pgd-eot | 0.0 s (reuses original/pgd) |" in text
    assert "of roofline" in text and "(reuses original/feature-space)" in text
    wall, cpu = result.distinct_seconds(), result.distinct_seconds("own_cpu_s")
    assert f"all rows: {wall:.1f} s ({wall / 60:.1f} min), {cpu:.1f} s of CPU time" in text
    assert f"Timing the passes for the rooflines took {result.timing_overhead():.1f} s more." in text
    assert result.timing_overhead() > 0


def test_a_run_stored_before_the_timing_renders_without_it():
    result = AdaptiveResult([AttackerRecord("m", ORIGINAL, "pgd", "i0", False, 0.01, 0.1)],
                            budgets={"whitebox_l2": 0.2}, seconds={ORIGINAL: {"pgd": 1.0}})
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    row = rows[ORIGINAL, "pgd"]
    assert row["own_seconds"] is None and row["roofline_fraction"] is None and row["bwd_calls"] is None
    assert result.distinct_seconds() is None
    assert _timing_table(result, rows, [ORIGINAL], ["pgd"]) == []




def test_a_pass_made_once_is_timed_once(tiny):
    served = Normalized(tiny, (0.5,), (0.25,)).eval()
    times = PassTimes({"m": served})
    times.cost("m", (5, 3, 16, 16), "fwd", uses=1)
    assert [len(v) for v in times.samples.values()] == [1]
    times.cost("m", (5, 3, 16, 16), "fwd", uses=7)  # a later row using it more: more samples
    assert [len(v) for v in times.samples.values()] == [3]


def test_a_run_resumed_from_shards_stored_before_the_timing_has_none(matrix):
    """One shard without ``timing`` (stored by an earlier version): no partial total passes for the whole."""
    parts, result = matrix
    old = [(shard, ShardResult(part.records, None, {k: v for k, v in part.values.items() if k != "timing"}))
           if i == 0 else (shard, part) for i, (shard, part) in enumerate(parts)]
    resumed = collect_adaptive([ORIGINAL, "random-weight"], [], [], old, result.budgets)
    assert resumed.timing == {} and resumed.distinct_seconds() is None
    assert all(r["own_seconds"] is None for r in resumed.matrix())
    assert [r["k"] for r in resumed.matrix()] == [r["k"] for r in result.matrix()]


@pytest.mark.parametrize("older", [0, 1])
def test_a_run_resumed_from_shards_stored_before_cpu_seconds_has_no_cpu_total(matrix, older):
    """A shard timed before ``own_cpu_s`` was measured (first or last): its rows have no CPU seconds and the
    run no CPU total, while the wall-time total stays."""
    parts, result = matrix
    old = [(shard, ShardResult(part.records, None, {**part.values, "timing": {
        a: {k: v for k, v in t.items() if k != "own_cpu_s"} for a, t in part.values["timing"].items()}}))
        if i == older else (shard, part) for i, (shard, part) in enumerate(parts)]
    resumed = collect_adaptive([ORIGINAL, "random-weight"], [], [], old, result.budgets)
    assert resumed.distinct_seconds("own_cpu_s") is None
    assert resumed.distinct_seconds() == pytest.approx(result.distinct_seconds())
    rows = {(r["method"], r["attacker"]): r for r in resumed.matrix()}
    methods = [ORIGINAL, "random-weight"]
    assert rows[methods[older], "pgd"]["own_cpu_seconds"] is None
    assert rows[methods[1 - older], "pgd"]["own_cpu_seconds"] > 0


def test_a_rows_cpu_seconds_are_the_process_time_its_attack_took(monkeypatch):
    """_attack reads the process's CPU clock around the attack, beside the wall clock (fake clocks here)."""
    clocks = {"perf_counter": iter([10.0, 10.5]), "process_time": iter([100.0, 101.25])}
    monkeypatch.setattr(adaptive, "time", type("Clock", (), {n: staticmethod(lambda n=n: next(clocks[n]))
                                                            for n in clocks}))
    monkeypatch.setattr(adaptive, "attack", lambda name, ctx: "attempt")
    shard = Shard("digits", ORIGINAL, 0, 2, "adaptive", ())
    ctx, attempt, wall, cpu = adaptive._attack(None, shard, None, "pgd", None, torch.zeros(2, 1, 8, 8), {},
                                               torch.zeros(2, dtype=torch.long))
    assert (attempt, wall, cpu) == ("attempt", 0.5, 1.25) and ctx.row == "original/pgd"
