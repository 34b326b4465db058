"""``evaluate --out``: the run folder is locked before anything in it changes, so that a second run into the same
folder fails at once with a clear message instead of removing the first run's shards (and crashing one of them)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_keys_cli import error_of, fake_evaluate  # noqa: F401 - fake_evaluate: a fixture

from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.plan import Shard, ShardResult, plan
from fakegradient.evaluation.store import ShardStore, unfinished_run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="runs into one folder are locked with flock (POSIX)")

HOLD = """
import sys
from pathlib import Path
from fakegradient.evaluation.store import ShardStore
store = ShardStore(Path(sys.argv[1]) / ".shards")
(store.folder / "m__original__0000000-0000001.json").write_text("{}")
print("running", flush=True)
sys.stdin.read()  # until the test closes it
"""


@contextmanager
def running_run(out: Path) -> Iterator[subprocess.Popen]:
    """Another process that runs into ``out``: it holds the folder and has one finished shard in it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline() == "running\n"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_a_second_run_into_the_same_folder_fails_at_once_and_removes_nothing(tmp_path):
    out = tmp_path / "report"
    with running_run(out):
        for resume in (False, True):
            with pytest.raises(FakeGradientError, match=f"another `fakegradient evaluate` is running into {out}: "
                                                        "wait until it ends, or choose another --out"):
                ShardStore(out / ".shards", resume=resume)
        assert [p.name for p in (out / ".shards").iterdir()] == ["m__original__0000000-0000001.json"]
    store = ShardStore(out / ".shards", resume=True)  # the first run ended: its folder is free again
    assert unfinished_run(store.folder)
    store.close()


def test_the_cli_refuses_a_second_run_with_one_line(tmp_path, capsys, fake_evaluate):  # noqa: F811
    out = tmp_path / "report"
    with running_run(out):
        line = error_of(capsys, "evaluate", "--limit", "1", "--out", out, "--fresh")
        assert line == f"error: another `fakegradient evaluate` is running into {out}: wait until it ends, or " \
                       "choose another --out"
        assert fake_evaluate == [] and (out / ".shards" / "m__original__0000000-0000001.json").is_file()
    error_of(capsys, "evaluate", "--limit", "1", "--out", out, "--fresh")  # free again: reaches the evaluation
    assert len(fake_evaluate) == 1 and not any((out / ".shards").iterdir())


def test_one_process_may_open_its_run_folder_again_and_release_it(tmp_path):
    first = ShardStore(tmp_path / ".shards")
    with ShardStore(tmp_path / ".shards", resume=True):  # the same process: a resumed store, as the CLI's tests do
        pass
    take = "import sys; from pathlib import Path; from fakegradient.evaluation.store import ShardStore; " \
           "ShardStore(Path(sys.argv[1]) / '.shards')"
    other = subprocess.run([sys.executable, "-c", take, str(tmp_path)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert other.returncode == 1 and "another `fakegradient evaluate`" in other.stderr  # still held by `first`
    first.close()
    with running_run(tmp_path):  # released: another process can take it
        pass


def test_a_stored_adaptive_shard_of_another_attacker_registry_is_recomputed(tmp_path):
    """An adaptive shard holds the rows of the code that ran it: resumed with another attacker registry (or
    stored before shards recorded it), it is not reused, so a matrix never mixes rows of two registries."""
    budgets = {"original": {"whitebox_l2": 0.1}}
    (shard,) = plan("m", ["original"], 4, 4, "adaptive", budgets, attackers=("naive", "pgd"))
    with ShardStore(tmp_path / ".shards") as store:
        store.put(shard, ShardResult([{"attacker": "pgd"}]))
        assert store.get(shard).records == [{"attacker": "pgd"}]
        assert Shard.from_json(shard.to_json()) == shard
        assert store.get(dataclasses.replace(shard, attackers=("naive", "pgd", "apgd-dlr"))) is None
        stored = tmp_path / ".shards" / f"{shard.id}.json"
        payload = json.loads(stored.read_text())
        del payload["shard"]["attackers"]  # written by code from before the registry was recorded
        stored.write_text(json.dumps(payload))
        assert store.get(shard) is None
        assert store.get(dataclasses.replace(shard, attackers=())).records == [{"attacker": "pgd"}]


def test_a_run_recorded_before_a_setting_existed_resumes_at_its_default_only(tmp_path):
    """An upgrade that adds a setting (e.g. channels_last) keeps an unfinished run resumable at the new setting's
    default, which is the old behaviour; any other value is another run."""
    from fakegradient.evaluation.config import EvaluationConfig

    config = EvaluationConfig(models=["m"], methods=["original"], seed=0)
    settings, defaults = config.to_dict(), EvaluationConfig.defaults()
    assert defaults["channels_last"] is False
    with ShardStore(tmp_path / ".shards") as store:
        store.begin({k: v for k, v in settings.items() if k != "channels_last"}, defaults)  # the older run
    with ShardStore(tmp_path / ".shards", resume=True) as store:
        store.begin(settings, defaults)  # resumed at the default: the same run
        with pytest.raises(FakeGradientError, match=r"other settings \(channels_last\)"):
            store.begin({**settings, "channels_last": True}, defaults)
        with pytest.raises(FakeGradientError, match=r"other settings \(channels_last\)"):
            store.begin(settings)  # without the defaults, an absent setting is a difference
