"""The command line never loses a key or an unfinished evaluation, and a bad key file is a one-line error."""

import json
import os
import stat

import pytest

from fakegradient import Key
from fakegradient.cli import main
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation import runner
from fakegradient.modelfile import read_info

SMALL = ["mobilenet_v2", "--weights", "none", "--num-classes", "10", "--no-onnx"]


def error_of(capsys, *args, code=1) -> str:
    assert main([str(a) for a in args]) == code
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()  # one line, no traceback
    assert line.startswith("error: "), line
    return line


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_protect_refuses_to_overwrite_a_key_or_model_files(tmp_path, capsys):
    key, cloud = tmp_path / "device" / "key.json", tmp_path / "cloud"
    key.parent.mkdir()
    key.write_bytes(b"the key of the deployed model")
    before = snapshot(tmp_path)
    line = error_of(capsys, "protect", *SMALL, "--out", cloud, "--key", key)
    assert f"refusing to overwrite {key}" in line and "--force" in line
    assert snapshot(tmp_path) == before  # nothing written, not even the --out folder
    cloud.mkdir()
    for name in ("model.pt", "model.onnx"):  # a new key, but the cloud folder of another one
        (cloud / name).write_bytes(b"deployed")
        before = snapshot(tmp_path)
        line = error_of(capsys, "protect", *SMALL, "--out", cloud, "--key", tmp_path / "new.json")
        assert f"refusing to overwrite {cloud / name}" in line
        assert snapshot(tmp_path) == before
        (cloud / name).unlink()


def fingerprint(cloud):
    return read_info(cloud / "model.pt")[0].fingerprint


def test_protect_force_keeps_every_old_key(tmp_path, capsys):
    key, cloud = tmp_path / "key.json", tmp_path / "cloud"
    keys = []
    for run in range(3):
        if run == 2:
            (cloud / "model.onnx").write_bytes(b"the old model's export")  # stale with --no-onnx: removed
        assert main(["protect", *SMALL, "--out", str(cloud), "--key", str(key), *(["--force"] * (run > 0))]) == 0
        printed = capsys.readouterr().out
        keys.append(key.read_bytes())
        assert Key.load(key).model_fingerprint == fingerprint(cloud)  # the folder matches the new key
        assert not (cloud / "model.onnx").exists()
    assert "old key kept as" in printed and printed.strip().endswith("key.json.old.1")
    assert len(set(keys)) == 3
    assert (tmp_path / "key.json.old").read_bytes() == keys[0]  # never replaced by the second --force
    assert (tmp_path / "key.json.old.1").read_bytes() == keys[1]
    for name in ("key.json", "key.json.old", "key.json.old.1"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud", "key.json", "key.json.old", "key.json.old.1"]


def test_failed_forced_protect_keeps_the_key_and_leaves_no_copy(tmp_path, capsys):
    key = tmp_path / "key.json"
    key.write_bytes(b"old key")
    before = snapshot(tmp_path)
    assert "unknown model" in error_of(capsys, "protect", "nope", "--weights", "none", "--out", tmp_path / "cloud",
                                       "--key", key, "--force")
    assert snapshot(tmp_path) == before


def test_interrupted_forced_protect_after_the_key_was_replaced_keeps_the_old_copy(tmp_path, monkeypatch, capsys):
    key = tmp_path / "key.json"
    key.write_bytes(b"old key")
    real_save = Key.save

    def save_then_interrupt(self, path, *, replace=False):
        assert replace  # --force
        real_save(self, path, replace=replace)
        raise KeyboardInterrupt

    monkeypatch.setattr(Key, "save", save_then_interrupt)
    assert main(["protect", *SMALL, "--out", str(tmp_path / "cloud"), "--key", str(key), "--force"]) == 130
    assert (tmp_path / "key.json.old").read_bytes() == b"old key"  # the only copy left of the old key


@pytest.fixture
def fake_evaluate(monkeypatch):
    """Replace the evaluation: record the store it got, then stop (a clear error, exit 1)."""
    calls = []

    def evaluate(config, store=None, executor=None):
        calls.append(store)
        raise FakeGradientError("stopped by the test")

    monkeypatch.setattr(runner, "evaluate", evaluate)
    return calls


def test_evaluate_refuses_to_discard_an_unfinished_run(tmp_path, capsys, fake_evaluate):
    out = tmp_path / "report"
    shards = out / ".shards"
    shards.mkdir(parents=True)
    (shards / "run.json").write_text(json.dumps({"settings": {}, "seeds": {}}))
    (shards / "m__original__0000000-0000001.json").write_text("{}")
    before = snapshot(out)
    flags = ["evaluate", "--limit", "1", "--out", out]
    line = error_of(capsys, *flags)
    assert "unfinished run" in line and "--resume" in line and "--fresh" in line
    assert "exclude" in error_of(capsys, *flags, "--resume", "--fresh", code=2)
    assert snapshot(out) == before and fake_evaluate == []
    error_of(capsys, *flags, "--resume")  # reaches the evaluation with the shards kept
    assert len(fake_evaluate) == 1 and snapshot(out) == before
    error_of(capsys, *flags, "--fresh")  # reaches it with the shards discarded
    assert len(fake_evaluate) == 2 and not any(shards.iterdir())


def test_evaluate_may_replace_a_finished_report(tmp_path, capsys, fake_evaluate):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("a finished run keeps no .shards folder")
    (out / ".shards").mkdir()  # empty: nothing to lose
    error_of(capsys, "evaluate", "--limit", "1", "--out", out)
    assert len(fake_evaluate) == 1


@pytest.mark.skipif(os.name != "posix", reason="POSIX device files")
def test_bad_key_files_are_one_line_errors_on_the_command_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b'{"format": "fakegradient-key", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert "not a fakegradient key file" in error_of(capsys, "info", deep)
    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (9 * 2**20))
    assert "larger than" in error_of(capsys, "info", big)
    assert "holds no model.pt or model.onnx" in error_of(capsys, "info", tmp_path)  # a folder: a cloud folder's?
    assert "not a regular file" in error_of(capsys, "info", "/dev/zero")
    line = error_of(capsys, "classify", "--model", tmp_path, "--key", "/dev/zero", tmp_path / "x.jpg")
    assert line == "error: key file /dev/zero is not a regular file"
