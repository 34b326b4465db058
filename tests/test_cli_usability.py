"""The CLI's help and its answers to the usual slips: every command has a description and an example, a close
model name is suggested, a URL without its scheme and swapped --model/--key are named, `models` says which
weights this machine has, `info` on a photo says what it expects."""

from __future__ import annotations

import argparse

import pytest
import torch

from fakegradient import protect
from fakegradient.cli import EXAMPLES, build_parser, main
from fakegradient.deployment import save_deployment

PREPROCESS = {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_every_command_has_a_description_and_an_example():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        assert command.description and command.description in " ".join(text.split()), name
        assert name in EXAMPLES and f"fakegradient {name}" in text, name


def test_a_close_model_name_is_suggested(capsys):
    assert main(["protect", "mobilenetv2", "--out", "cloud", "--key", "k"]) == 1
    assert "did you mean mobilenet_v2" in capsys.readouterr().err


def test_models_marks_the_weights_this_machine_has(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (mobilenet,) = [line for line in lines if line.startswith("mobilenet_v2 ")]
    assert "weights here: IMAGENET1K_V1" in mobilenet  # placed by `make install` (`fakegradient weights`)
    assert "alexnet" in lines  # a name without local weights is listed bare


@pytest.fixture
def deployed(tiny, tiny_input, tmp_path):
    served, key = protect(tiny, example_input=tiny_input)
    save_deployment(tmp_path / "cloud", tmp_path / "device" / "k.key", served, key, input_size=[3, 16, 16],
                    extra={"preprocess": PREPROCESS})
    return tmp_path / "cloud", tmp_path / "device" / "k.key"


def test_swapped_model_and_key_are_named(deployed, capsys):
    cloud, key = deployed
    assert main(["classify", "--model", str(key), "--key", str(cloud), "photo.png"]) == 2
    assert "--model and --key look swapped" in capsys.readouterr().err


def test_a_server_without_its_scheme_is_named(deployed, capsys):
    _, key = deployed
    assert main(["classify", "--server", "127.0.0.1:8000", "--key", str(key), "photo.png"]) == 2
    assert "give its scheme, e.g. http://127.0.0.1:8000" in capsys.readouterr().err


def test_info_on_a_photo_says_what_it_reads(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    assert main(["info", str(tmp_path / "photo.jpg")]) == 1
    err = capsys.readouterr().err
    assert "is not a key, device-head or protected-model file" in err and "torch" not in err


def test_without_a_model_name_the_key_picks_its_model(tiny, tiny_input, tmp_path, capsys):
    """Two protected models on one server: the key's fingerprint names its own, no --model-name needed."""
    import numpy as np
    from PIL import Image
    from test_server_support import in_thread

    from fakegradient.serving.onnx_model import load_model_dir
    from fakegradient.serving.server import build_server

    keys = {}
    for name in ("first", "second"):
        served, key = protect(tiny, example_input=tiny_input, labels=[f"{name} {i}" for i in range(10)])
        save_deployment(tmp_path / name, tmp_path / f"{name}.key", served, key, input_size=[3, 16, 16],
                        extra={"preprocess": PREPROCESS})
        keys[name] = tmp_path / f"{name}.key"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.png")
    models = [load_model_dir(tmp_path / name) for name in ("first", "second")]
    with in_thread(build_server(models)) as (host, port):
        for name, key in keys.items():
            assert main(["classify", "--server", f"http://{host}:{port}", "--key", str(key), "--top", "1",
                         str(tmp_path / "photo.png")]) == 0
            assert capsys.readouterr().out.startswith(f"photo.png: {name} ")


def test_classify_json_is_one_object_per_image(deployed, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    cloud, key = deployed
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    code = main(["classify", "--model", str(cloud), "--key", str(key), "--json", "--top", "2",
                 str(tmp_path / "photo.png"), str(tmp_path / "broken.png")])
    assert code == 1  # one image failed
    lines = {entry["image"]: entry for entry in map(json.loads, capsys.readouterr().out.splitlines())}
    good, bad = lines["photo.png"], lines["broken.png"]  # a failure is told at once, before its batch
    assert good["image"] == "photo.png" and len(good["top"]) == 2 and isinstance(good["fake"], bool)
    assert {"class", "label", "p"} == set(good["top"][0]) and 0 <= good["top"][0]["p"] <= 1
    assert bad["image"] == "broken.png" and "not" in bad["error"]
