"""The command line: the happy path and every bad input a clear one-line error, non-zero exit."""

import argparse
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from fakegradient import Key
from fakegradient.cli import build_parser, main
from fakegradient.data import foolbox_imagenet
from fakegradient.evaluation.config import EvaluationConfig


# users of this fixture are slow: it protects the real MobileNetV2 and exports it to ONNX
@pytest.fixture(scope="module")
def protected_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    code = main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                 "--out", str(root / "cloud"), "--key", str(root / "device" / "key.json")])
    assert code == 0
    return root


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fakegradient.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def integer_arrays(value):
    """Every integer-valued array in a loaded model.pt payload: integer tensors, integral float tensors and
    lists of integers in the metadata, found recursively."""
    if isinstance(value, torch.Tensor):
        array = value.detach().numpy().reshape(-1)
        if value.dtype.is_floating_point and not (array.size and np.isfinite(array).all()
                                                  and (array == np.round(array)).all()):
            return
        yield array.astype(np.int64)
    elif isinstance(value, dict):
        for item in value.values():
            yield from integer_arrays(item)
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            yield np.asarray(value, dtype=np.int64)
        for item in value:
            yield from integer_arrays(item)


def key_arrays(key):
    inverse = np.argsort(key.permutation)
    return {"permutation": key.permutation, "inverse": inverse, "real positions": key.permutation[: key.n_real],
            "fake positions": key.permutation[key.n_real:]}


def leaked(payload, key):
    return [name for array in integer_arrays(payload) for name, secret in key_arrays(key).items()
            if np.array_equal(array, secret)]


@pytest.mark.slow
def test_protect_writes_cloud_files_and_private_key(protected_dir):
    assert sorted(p.name for p in (protected_dir / "cloud").iterdir()) == ["model.onnx", "model.pt"]
    key_path = protected_dir / "device" / "key.json"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = Key.load(key_path)
    payload = torch.load(protected_dir / "cloud" / "model.pt", map_location="cpu", weights_only=True)
    assert payload["info"]["fingerprint"] == key.model_fingerprint
    assert len(list(integer_arrays(payload))) > 10  # the scan sees the state dict's integer tensors
    assert leaked(payload, key) == []
    # the scan would find the key had it been stored, as a tensor or as metadata
    assert leaked(payload | {"extra": torch.from_numpy(key.permutation)}, key) == ["permutation"]
    assert leaked(payload | {"info": payload["info"] | {"order": np.argsort(key.permutation).tolist()}},
                  key) == ["inverse"]
    assert leaked({"w": torch.from_numpy(key.permutation[: key.n_real]).float()}, key) == ["real positions"]


@pytest.mark.slow
def test_info_never_shows_the_permutation(protected_dir, capsys):
    assert main(["info", str(protected_dir / "device" / "key.json")]) == 0
    key_info = json.loads(capsys.readouterr().out)
    assert key_info["n_outputs"] == 2000 and "permutation" not in key_info
    assert main(["info", str(protected_dir / "cloud" / "model.pt")]) == 0
    model_info = json.loads(capsys.readouterr().out)
    assert model_info["fingerprint"] == key_info["model_fingerprint"]


@pytest.mark.slow
def test_classify_prints_true_labels(protected_dir, capsys):
    samples = foolbox_imagenet()[:3]
    assert main(["classify", "--model", str(protected_dir / "cloud"), "--key",
                 str(protected_dir / "device" / "key.json"), "--top", "1", *(str(s.path) for s in samples)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("imagenet_00_243.jpg: bull mastiff")
    assert all("fake=True" in line for line in lines)


def test_info_and_classify_take_the_folder_model_pt_or_model_onnx(protected_dir, capsys):
    cloud, key = protected_dir / "cloud", str(protected_dir / "device" / "key.json")
    photo = str(foolbox_imagenet()[0].path)
    printed = []
    for model in (cloud, cloud / "model.pt", cloud / "model.onnx"):
        assert main(["info", str(model)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["n_outputs"] == 2000 and info["preprocess"]["crop"] == 224 and info["n_categories"] == 1000
        assert main(["classify", "--model", str(model), "--key", key, "--top", "1", photo]) == 0
        printed.append(capsys.readouterr().out.split("%")[0])
    assert printed[0].startswith("imagenet_00_243.jpg: bull mastiff") and len(set(printed)) == 1


@pytest.mark.slow
def test_evaluate_with_every_model_skipped_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    assert main(["evaluate", "--models", "resnet18,nope_net", "--out", str(tmp_path / "report")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: no model could be evaluated") and "resnet18" in line and "nope_net" in line
    assert not (tmp_path / "report").exists()


def commands():
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


def test_help_lists_commands(capsys):
    names = commands()
    assert len(names) >= 8
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^    ([a-z][a-z-]*)\s", out, flags=re.MULTILINE)
    assert sorted(listed) == sorted(names), out
    for name in names:  # and each has its own help
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert f"usage: fakegradient {name}" in capsys.readouterr().out


@pytest.mark.slow
def test_python_m_fakegradient_models():
    result = subprocess.run([sys.executable, "-m", "fakegradient", "models"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    *lines, note = result.stdout.splitlines()
    names = [line.split()[0] for line in lines]  # a name, then the weights this machine has, if any
    assert names == sorted(names) and len(names) == len(set(names)) and "timm:NAME" in note
    assert {"mobilenet_v2", "resnet18", "efficientnet_lite0", "vit_b_16"} <= set(names)


def assert_clean_error(result, pattern):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert pattern in result.stderr, result.stderr


@pytest.mark.slow
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
    assert not (tmp_path / "k.json").exists()
    # that no --out folder is left behind either: test_failed_protect_leaves_nothing_behind


def test_failed_protect_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    out = ["--out", str(work / "cloud"), "--key", str(work / "device" / "k.json")]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    for args in (["nope"], ["resnet18"], ["mobilenet_v2", "--weights", "V9"],
                 ["squeezenet1_0", "--weights", "none", "--no-onnx"]):
        assert main(["protect", *args, *out]) != 0
        assert capsys.readouterr().err.startswith("error: ")
        assert list(work.iterdir()) == [], args


@pytest.mark.slow
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
    assert "is not a key, device-head or protected-model file" in error_of("info", text)
    assert "inside --out" in error_of("protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1",
                                      "--out", tmp_path / "cloud", "--key", tmp_path / "cloud" / "k.json")
    assert not (tmp_path / "cloud").exists()


@pytest.mark.slow
def test_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    flags = {"limit": 2, "methods": ("original", "fake-gradient"), "max_iter": 3, "timing_repeats": 2, "seed": 0}
    assert main(["evaluate", "--limit", "2", "--methods", "original,fake-gradient", "--max-iter", "3",
                 "--timing-repeats", "2", "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "results.json", "per_image.csv"):
        assert (out / name).is_file(), name
    assert not (out / ".shards").exists()  # a finished run keeps no resume state
    payload = json.loads((out / "results.json").read_text())
    expected = EvaluationConfig(**flags)
    assert payload["config"] == json.loads(json.dumps(expected.to_dict()))
    for name, value in flags.items():
        assert payload["config"][name] == (list(value) if isinstance(value, tuple) else value), name
    rows = (out / "per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + 2 methods x 2 images
    assert sum("fake-gradient" in row for row in rows[1:]) == 2
    lines = [line for line in printed.splitlines() if "defense success" in line]
    assert len(lines) == 2 and "original" in lines[0] and "fake-gradient" in lines[1]
    assert f"report: {out}" in printed


def test_demo_prints_the_20_photos_and_the_logit_difference(capsys):
    assert main(["demo", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    photos = [line for line in out.splitlines() if re.match(r"imagenet_\d\d_\d+\.jpg ", line)]
    assert len(photos) == 20 == len({line.split()[0] for line in photos})
    assert all(" yes " in line for line in photos)  # the cloud's top-1 is a fake output for every photo
    assert "MISMATCH" not in out
    (difference,) = re.findall(r"max \|difference\| (\S+)", out)
    assert math.isfinite(float(difference)) and 0 <= float(difference) < 1e-3


@pytest.mark.slow
def test_export_triton(protected_dir, tmp_path, capsys):
    key = Key.load(protected_dir / "device" / "key.json")
    repo = tmp_path / "repo"
    assert main(["export-triton", str(protected_dir / "cloud"), str(repo), "--name", "mnv2",
                 "--max-batch", "8"]) == 0
    assert "mnv2" in capsys.readouterr().out
    model = repo / "mnv2" / "1" / "model.onnx"
    assert model.read_bytes() == (protected_dir / "cloud" / "model.onnx").read_bytes()
    config = (repo / "mnv2" / "config.pbtxt").read_text()
    assert 'name: "mnv2"' in config and "max_batch_size: 8" in config
    assert f'string_value: "{key.model_fingerprint}"' in config
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "mnv2", "mnv2/1", "mnv2/1/model.onnx", "mnv2/config.pbtxt"]


@pytest.mark.slow
def test_export_triton_refuses_a_folder_holding_a_key(protected_dir, tmp_path, capsys):
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    shutil.copy(protected_dir / "cloud" / "model.onnx", leaky / "model.onnx")
    shutil.copy(protected_dir / "device" / "key.json", leaky / "notes.txt")  # found by content, not by name
    repo = tmp_path / "repo"
    assert main(["export-triton", str(leaky), str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "key" in err and "notes.txt" in err, err
    assert not repo.exists()


def test_a_reader_that_goes_away_is_no_traceback():
    # `fakegradient models | head -1`: the pipe closes before (or while) we write
    proc = subprocess.Popen([sys.executable, "-m", "fakegradient", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
