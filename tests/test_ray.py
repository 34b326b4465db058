"""Scale-out on Ray: same numbers as a single process, survives dying workers, resumes."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_records_close

from fakegradient.data import foolbox_imagenet
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.plan import Shard, ShardResult, group_from_json, group_to_json, groups, plan
from fakegradient.evaluation.runner import evaluate
from fakegradient.evaluation.stages import naive
from fakegradient.evaluation.stages.attackers import ATTACKERS
from fakegradient.evaluation.store import ShardStore

ray = pytest.importorskip("ray")  # an optional extra; `make test` installs it
from fakegradient.evaluation.ray_executor import RayExecutor, ShardWorker  # noqa: E402

CRASH_DIR_ENV = "TEST_RAY_CRASH_DIR"  # set on the Ray workers by the crashing_ray fixture


class CrashOnceWorker(ShardWorker):
    """A ShardWorker that dies (the process exits) the first time any worker starts a shard: a marker
    file per shard in ``$TEST_RAY_CRASH_DIR`` says it already did. In a group of shards it dies after
    yielding the ones before: its retry runs and yields them again."""

    def __call__(self, batch):
        shards = [shard for text in batch["shard"] for shard in group_from_json(str(text))]
        self.crash_unless_started(shards[0])
        for i, row in enumerate(super().__call__(batch)):
            yield row
            if i + 1 < len(shards):
                self.crash_unless_started(shards[i + 1])

    @staticmethod
    def crash_unless_started(shard):
        marker = Path(os.environ[CRASH_DIR_ENV]) / shard.id
        if not marker.exists():
            marker.touch()
            os._exit(1)  # a worker killed mid-run


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def crashing_executor(workers: int | None = None) -> RayExecutor:
    return RayExecutor("local", workers, worker=CrashOnceWorker)


def small_config(adaptive: bool = False):
    return EvaluationConfig(models=["mobilenet_v2:IMAGENET1K_V1"], methods=["original", "fake-gradient"],
                            limit=4, batch_size=2, seed=0, timing_repeats=2, adaptive=adaptive,
                            blackbox_queries=10, feature_steps=2, feature_restarts=1, iterative_steps=2,
                            attacker_images=("cw=1", "square=1", "hopskipjump=1", "query-only-square=1",
                                             "query-only-hopskipjump=1"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray workers run one thread each: same kernels, same float sums
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_process():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(small_config(adaptive=True), progress=False).evaluations[0]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_process_records(single_process):
    return single_process.records


@pytest.fixture(scope="module")
def crashing_ray(tmp_path_factory):
    """A local Ray instance with 2 CPUs; a :class:`CrashOnceWorker` there dies once on every shard it starts."""
    crash_dir = tmp_path_factory.mktemp("crashes")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {CRASH_DIR_ENV: str(crash_dir), "OMP_NUM_THREADS": "1"}})
    yield crash_dir
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_single_process_despite_dying_workers(crashing_ray, single_process, tmp_path):
    """Naive DeepFool and the adaptive attackers on Ray Data actors, each of which dies once per shard."""
    store = ShardStore(tmp_path / "shards")
    on_ray = evaluate(small_config(adaptive=True), progress=False, store=store,
                      executor=crashing_executor()).evaluations[0]
    shard_ids = {path.stem for path in (tmp_path / "shards").glob("*.json") if path.name != "run.json"}
    assert len(shard_ids) == 4 + 2 + 4  # naive DeepFool, transfer, adaptive (every scheme, the original too)
    assert {path.name for path in crashing_ray.iterdir()} == shard_ids  # every shard's first worker died
    # complete, in order, no duplicates, same decisions; floats equal up to rounding (other processes)
    assert_records_close(on_ray.records, single_process.records)
    assert len({(r.method, r.image) for r in on_ray.records}) == len(on_ray.records) == 8
    assert_records_close(on_ray.adaptive.records, single_process.adaptive.records)
    on_one = len(small_config(adaptive=True).attacker_images)  # cw, square, hopskipjump, query-only rows: 1 image
    assert len(on_ray.adaptive.records) == 2 * (4 * (len(ATTACKERS) - on_one) + on_one)
    for method, curves in single_process.adaptive.curves.items():
        for attacker, points in curves.items():
            np.testing.assert_allclose(on_ray.adaptive.curves[method][attacker], points, rtol=1e-5)
    assert on_ray.adaptive.budgets.keys() == single_process.adaptive.budgets.keys()
    np.testing.assert_allclose(list(on_ray.adaptive.budgets.values()),
                               list(single_process.adaptive.budgets.values()), rtol=1e-5)
    assert on_ray.adaptive.key_recovery["fake-gradient"]["key-recovery-file"]["recovered_pct"] == 100.0
    for method in ("original", "fake-gradient"):  # each slice's shards on one actor: the same sharing as here
        features = on_ray.adaptive.timing[method]["feature-space"]
        assert features["reused"] == single_process.adaptive.timing[method]["feature-space"]["reused"]
        assert features["passes"] == single_process.adaptive.timing[method]["feature-space"]["passes"]
    assert on_ray.adaptive.timing["fake-gradient"]["feature-space"]["reused"] == ["original/feature-space"]
    torch.testing.assert_close(on_ray.heatmaps["fake-gradient"], single_process.heatmaps["fake-gradient"],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_cpu_decode_stage_feeds_the_actors(crashing_ray, single_process_records):
    """One actor on two CPUs: images are decoded by Ray Data tasks on the free CPU (the GPU layout)."""
    executor = crashing_executor(workers=1)
    assert_records_close(evaluate(small_config(), progress=False, executor=executor).records, single_process_records)
    assert executor.decode_stage


@pytest.mark.slow
def test_a_bad_image_on_a_worker_is_a_clear_error(crashing_ray, tmp_path):
    folder = tmp_path / "data" / "n01"
    folder.mkdir(parents=True)
    for i, sample in enumerate(foolbox_imagenet()[:2]):
        shutil.copy(sample.path, folder / f"a{i}.jpg")
    (folder / "z.jpg").write_bytes(b"not a jpeg")  # past the driver's heatmap images: only a worker reads it
    config = EvaluationConfig(models=["mobilenet_v2:IMAGENET1K_V1"], methods=["original"], data=str(tmp_path / "data"),
                              batch_size=1, max_iter=2, heatmap_images=1, seed=0, timing_repeats=2)
    store = ShardStore(tmp_path / "shards")
    with pytest.raises(FakeGradientError, match=r"z\.jpg is not a readable image.*--resume"):
        evaluate(config, progress=False, store=store, executor=crashing_executor())


@pytest.mark.slow
def test_resume_skips_finished_shards(tmp_path, monkeypatch, single_process_records, one_thread):
    folder = tmp_path / "shards"
    first = evaluate(small_config(), progress=False, store=ShardStore(folder)).records
    (folder / "mobilenet_v2_IMAGENET1K_V1__fake-gradient__0000002-0000004.json").unlink()  # "interrupted"
    calls = []
    real_attack_batch = naive.attack_batch
    monkeypatch.setattr(naive, "attack_batch", lambda shard, *a: calls.append(shard.id) or real_attack_batch(shard, *a))
    second = evaluate(small_config(), progress=False, store=ShardStore(folder, resume=True)).records
    assert calls == ["mobilenet_v2_IMAGENET1K_V1__fake-gradient__0000002-0000004"]
    assert_records_close(second, first)
    assert_records_close(first, single_process_records)
    calls.clear()
    evaluate(small_config(), progress=False, store=ShardStore(folder, resume=False))
    assert len(calls) == 4  # without --resume everything is recomputed


@pytest.mark.slow
def test_resume_without_a_seed_keeps_the_runs_keys_and_settings(tmp_path, one_thread):
    folder = tmp_path / "shards"
    config = EvaluationConfig(models=["mobilenet_v2:IMAGENET1K_V1"], methods=["fake-gradient"], limit=2,
                              batch_size=1, max_iter=3, timing_repeats=2)  # no seed: drawn from the CSPRNG
    first = evaluate(config, progress=False, store=ShardStore(folder)).evaluations[0]
    (folder / "mobilenet_v2_IMAGENET1K_V1__fake-gradient__0000001-0000002.json").unlink()
    second = evaluate(config, progress=False, store=ShardStore(folder, resume=True)).evaluations[0]
    assert second.seed == first.seed  # the recomputed shard used the same key
    assert_records_close(second.records, first.records)
    other = dataclasses.replace(config, max_iter=4)
    with pytest.raises(FakeGradientError, match="other settings.*max_iter"):
        evaluate(other, progress=False, store=ShardStore(folder, resume=True))


@pytest.mark.slow
def test_a_shard_may_run_longer_than_rays_no_progress_timeout(crashing_ray):
    """Ray Data stops a dataset that moves no block for 1800 s; a group of HopSkipJump shards runs for hours."""
    crashing_executor()
    assert ray.data.DataContext.get_current().execution_no_progress_timeout_s == -1


def test_adaptive_shards_of_one_slice_are_one_group_the_original_first():
    shards = plan("m", ["fake-gradient", "original"], 4, 2, "adaptive") + plan("m", ["original"], 4, 2)
    grouped = groups(shards)
    assert [[(s.method, s.start, s.stage) for s in group] for group in grouped] == [
        [("original", 0, "adaptive"), ("fake-gradient", 0, "adaptive")],
        [("original", 2, "adaptive"), ("fake-gradient", 2, "adaptive")],
        [("original", 0, "deepfool")], [("original", 2, "deepfool")]]
    assert group_from_json(group_to_json(grouped[0])) == grouped[0]


def test_a_stored_shard_is_reused_only_for_the_same_budgets(tmp_path):
    shard = Shard("m", "fake-gradient", 0, 2, "adaptive", (("base_l2", 0.5), ("naive_l2", 0.1)))
    store = ShardStore(tmp_path)
    store.put(shard, ShardResult([{"a": 1}], None, {"feature_curve": [[True, False]]}))
    assert ShardStore(tmp_path, resume=True).get(shard) == ShardResult([{"a": 1}], None, {"feature_curve": [[True, False]]})
    other = Shard("m", "fake-gradient", 0, 2, "adaptive", (("base_l2", 0.6), ("naive_l2", 0.1)))
    assert other.id == shard.id and store.get(other) is None  # budgets changed: recomputed
    (tmp_path / f"{shard.id}.json").write_text("{not json")
    assert store.get(shard) is None  # damaged: recomputed


@pytest.mark.slow
def test_nothing_imports_ray_without_the_flag():
    code = ("import sys, fakegradient.cli, fakegradient.evaluation.runner, fakegradient.evaluation.report;"
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
