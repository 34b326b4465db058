"""The command line: the happy path and every bad input a clear one-line error, non-zero exit."""

import json
import os
import stat
import subprocess
import sys

import pytest

from fakegradient.cli import main
from fakegradient.data import foolbox_imagenet


@pytest.fixture(scope="module")
def protected_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    code = main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                 "--out", str(root / "cloud"), "--key", str(root / "device" / "key.json")])
    assert code == 0
    return root


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fakegradient.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_protect_writes_cloud_files_and_private_key(protected_dir):
    assert sorted(p.name for p in (protected_dir / "cloud").iterdir()) == ["model.onnx", "model.pt"]
    key = protected_dir / "device" / "key.json"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert b"permutation" not in (protected_dir / "cloud" / "model.pt").read_bytes()


def test_info_never_shows_the_permutation(protected_dir, capsys):
    assert main(["info", str(protected_dir / "device" / "key.json")]) == 0
    key_info = json.loads(capsys.readouterr().out)
    assert key_info["n_outputs"] == 2000 and "permutation" not in key_info
    assert main(["info", str(protected_dir / "cloud" / "model.pt")]) == 0
    model_info = json.loads(capsys.readouterr().out)
    assert model_info["fingerprint"] == key_info["model_fingerprint"]


def test_classify_prints_true_labels(protected_dir, capsys):
    samples = foolbox_imagenet()[:3]
    assert main(["classify", "--model", str(protected_dir / "cloud"), "--key",
                 str(protected_dir / "device" / "key.json"), "--top", "1", *(str(s.path) for s in samples)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("imagenet_00_243.jpg: bull mastiff")
    assert all("fake=True" in line for line in lines)


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("protect", "info", "classify", "demo"):
        assert command in result.stdout


def assert_clean_error(result, pattern):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert pattern in result.stderr, result.stderr


def test_bad_inputs_subprocess(tmp_path, protected_dir):
    key = protected_dir / "device" / "key.json"
    out = ["--out", tmp_path / "o", "--key", tmp_path / "k.json"]
    assert_clean_error(run_cli("protect", "nope", *out), "unknown model 'nope'")
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty-hub"))
    assert_clean_error(run_cli("protect", "resnet18", *out, env=env), "resnet18-f37072fd.pth into")
    assert_clean_error(run_cli("protect", "squeezenet1_0", "--weights", "none", *out), "--head")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(key.read_bytes()[:100])
    image = foolbox_imagenet()[0].path
    assert_clean_error(run_cli("classify", "--model", protected_dir / "cloud", "--key", truncated, image),
                       "truncated or corrupted")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_inputs_in_process(tmp_path, protected_dir, capsys):
    key = protected_dir / "device" / "key.json"
    image = str(foolbox_imagenet()[0].path)
    cloud = str(protected_dir / "cloud")

    def error_of(*args):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code != 0 and err.startswith("error: "), err
        return err

    out = ["--out", tmp_path / "o", "--key", tmp_path / "k.json"]
    for bad in ("0", "-1", "nan", "inf"):
        assert "scale" in error_of("protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--scale", bad, *out)
    assert "no weights" in error_of("protect", "mobilenet_v2", "--weights", "V9", *out)
    # an edited key (one bit flipped in the permutation)
    data = bytearray(key.read_bytes())
    index = data.index(b'"permutation": [') + 17
    data[index] ^= 0x01
    edited = tmp_path / "edited.json"
    edited.write_bytes(bytes(data))
    assert "modified or corrupted" in error_of("classify", "--model", cloud, "--key", edited, image)
    # the key of another protected model
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--no-onnx", "--seed", "1",
                 "--out", str(tmp_path / "other"), "--key", str(tmp_path / "other.json")]) == 0
    capsys.readouterr()
    assert "another model" in error_of("classify", "--model", cloud, "--key", tmp_path / "other.json", image)
    # not an image / missing image
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert "not a readable image" in error_of("classify", "--model", cloud, "--key", key, text)
    assert "no such image" in error_of("classify", "--model", cloud, "--key", key, tmp_path / "nope.jpg")
    # unwritable output paths: nothing is left behind
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot" in error_of("protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                                "--out", blocker / "sub", "--key", tmp_path / "k2.json")
    assert "cannot" in error_of("protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                                "--out", tmp_path / "o2", "--key", blocker / "k.json")
    assert not (tmp_path / "k2.json").exists() and not (tmp_path / "o2").exists()
    assert "fakegradient model file" in error_of("info", text)
    assert "inside --out" in error_of("protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                                      "--out", tmp_path / "cloud", "--key", tmp_path / "cloud" / "k.json")
    assert not (tmp_path / "cloud").exists()
