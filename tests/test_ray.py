"""Scale-out on Ray: same numbers as a single process, survives dying workers, resumes."""

import subprocess
import sys

import pytest
import torch

from fakegradient.evaluation import runner
from fakegradient.evaluation.runner import EvaluationConfig, evaluate
from fakegradient.evaluation.shards import ShardStore

ray = pytest.importorskip("ray")  # an optional extra; `make test` installs it


def small_config():
    return EvaluationConfig(models=["mobilenet_v2:IMAGENET1K_V1"], methods=["original", "fake-gradient"],
                            limit=4, batch_size=2, seed=0, timing_repeats=2)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray workers run one thread each: same kernels, same float sums
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_process_records():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(small_config(), progress=False).records
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crashing_ray(tmp_path_factory):
    """A local Ray instance with 2 workers, each of which dies once on every shard it starts."""
    from fakegradient.evaluation.ray_executor import CRASH_ONCE_ENV

    crash_dir = tmp_path_factory.mktemp("crashes")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {CRASH_ONCE_ENV: str(crash_dir), "OMP_NUM_THREADS": "1"}})
    yield crash_dir
    ray.shutdown()


def test_ray_matches_single_process_despite_dying_workers(crashing_ray, single_process_records, tmp_path):
    from fakegradient.evaluation.ray_executor import RayExecutor

    store = ShardStore(tmp_path / "shards")
    result = evaluate(small_config(), progress=False, store=store, executor=RayExecutor("local"))
    assert len(list(crashing_ray.iterdir())) == 4  # every shard's first worker died
    assert result.records == single_process_records  # complete, in order, no duplicates, same numbers
    assert len({(r.method, r.image) for r in result.records}) == len(result.records) == 8
    assert len(list((tmp_path / "shards").glob("*.json"))) == 4


def test_resume_skips_finished_shards(tmp_path, monkeypatch, single_process_records, one_thread):
    folder = tmp_path / "shards"
    first = evaluate(small_config(), progress=False, store=ShardStore(folder)).records
    (folder / "mobilenet_v2_IMAGENET1K_V1__fake-gradient__0000002-0000004.json").unlink()  # "interrupted"
    calls = []
    real_attack_batch = runner.attack_batch
    monkeypatch.setattr(runner, "attack_batch", lambda shard, *a: calls.append(shard.id) or real_attack_batch(shard, *a))
    second = evaluate(small_config(), progress=False, store=ShardStore(folder, resume=True)).records
    assert calls == ["mobilenet_v2_IMAGENET1K_V1__fake-gradient__0000002-0000004"]
    assert second == first == single_process_records
    calls.clear()
    evaluate(small_config(), progress=False, store=ShardStore(folder, resume=False))
    assert len(calls) == 4  # without --resume everything is recomputed


def test_nothing_imports_ray_without_the_flag():
    code = ("import sys, fakegradient.cli, fakegradient.evaluation.runner, fakegradient.evaluation.report;"
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
