"""workbench.flush_subnormals and the matrix's use of it: the rows marked ``flushes_subnormals`` run with
subnormals flushed (a backward pass through them can be much slower on Intel CPUs), every other row with IEEE
arithmetic, and the mode before is restored after each row however it ends."""

from pathlib import Path

import pytest
import torch

from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.plan import Shard
from fakegradient.evaluation.stages import adaptive
from fakegradient.evaluation.stages.attackers import ATTACKERS, Attacker
from fakegradient.evaluation.workbench import Workbench, flush_subnormals, served_pipelines
from fakegradient.methods import ORIGINAL

SUPPORTED = torch.set_flush_denormal(True)  # the CPU has the mode (x86 with SSE3, AArch64)
torch.set_flush_denormal(False)


def kept() -> bool:
    """Whether this thread keeps a float32 subnormal (IEEE) rather than flushing it to 0."""
    return (torch.tensor([2.0**-100], dtype=torch.float32) * 2.0**-40).item() != 0.0


def test_flushed_inside_restored_after():
    assert kept()
    with flush_subnormals():
        assert kept() is not SUPPORTED
    assert kept()
    with flush_subnormals(enabled=False):
        assert kept()
    assert kept()


def test_nested_and_forced_modes_restore_what_was_there():
    with flush_subnormals():
        with flush_subnormals():
            pass
        assert kept() is not SUPPORTED  # the inner exit left the outer mode
        with flush_subnormals(enabled=False):
            assert kept()  # IEEE forced inside a flushing block
        assert kept() is not SUPPORTED
    assert kept()


def test_restored_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"), flush_subnormals():
        raise RuntimeError("boom")
    assert kept()


def test_only_the_checked_rows_flush():
    assert {n for n, a in ATTACKERS.items() if a.flushes_subnormals} == {"pgd", "pgd-eot", "apgd", "cw"}


@pytest.mark.parametrize("flush", [True, False])
def test_the_matrix_flushes_the_marked_rows_only(digits_model, monkeypatch, flush):
    """Two stand-in attackers report the mode they ran in; the row's records do not matter here.
    ``FLUSH_SUBNORMALS`` off (matrix_speed's ``before``): no row flushed."""
    model, x, y = digits_model
    seen: dict[str, bool] = {}

    def probe(name):
        def run(ctx):
            seen[name] = kept()  # and None: "does not apply", no records needed
        return run

    registry = {"white-box": Attacker("the served model", "probe", probe("white-box"), budget="whitebox_l2",
                                      iterative=True, flushes_subnormals=True),
                "black-box": Attacker("the served outputs", "probe", probe("black-box"), budget="blackbox_l2"),
                "pgd": ATTACKERS["pgd"]}
    monkeypatch.setattr(adaptive, "ATTACKERS", registry)
    monkeypatch.setattr(adaptive, "FLUSH_SUBNORMALS", flush)
    config = EvaluationConfig(models=["digits"], methods=[ORIGINAL], seed=0, adaptive=True, iterative_steps=2)
    original = Normalized(model, (0.0,), (1.0,)).eval()
    samples = [Sample(Path(f"d{i}.png"), int(label)) for i, label in enumerate(y[:2])]
    bench = Workbench(config, original, served_pipelines(original, config, 0, x[:1]), samples, 0, x[:2])
    budgets = {"base_l2": 0.5, "whitebox_l2": 1.0, "blackbox_l2": 2.0, "blackbox_queries": 10.0}
    result = adaptive.run(bench, Shard("digits", ORIGINAL, 0, 2, "adaptive", tuple(sorted(budgets.items()))),
                          x[:2], samples)
    assert seen == {"white-box": not (flush and SUPPORTED), "black-box": True}
    assert kept()  # restored after the rows
    assert {r["attacker"] for r in result.records} == {"pgd"}  # a real flushed row still runs and records
