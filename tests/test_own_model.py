"""Your own model, end to end: a model fine-tuned on sklearn's digits, protected from its state dict through a
``--factory``, served, and classified by the device client with the names of ``--labels``; the refusals and
defaults a newcomer meets first (``--state-dict`` without ``--num-classes``, no ``--weights``)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_server_support import serve_subprocess

from fakegradient import Key, models
from fakegradient.cli import main
from fakegradient.modelfile import read_info
from fakegradient.serving.client import classify, load_labels

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# the user's own code: an RGB front end on the digits CNN (conftest's digits_model has the same layers)
FACTORY = '''
import torch
from torch import nn


class RgbDigits(nn.Module):
    """(B, 3, 8, 8) pixels in [0, 1] -> (B, num_classes): grey = mean of R, G, B, then a small CNN."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.net(x.mean(1, keepdim=True))


def build(num_classes: int = 1000):  # like torchvision's builders: 1000 classes unless told
    return RgbDigits(num_classes)
'''


def error_of(capsys, *args, code=1) -> str:
    assert main([str(a) for a in args]) == code
    (line,) = capsys.readouterr().err.splitlines()  # one line, no traceback
    assert line.startswith("error: "), line
    return line


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's working folder (the current one): their factory module."""
    (tmp_path / "digits_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("digits_factory", None)


def fine_tune(digits_model, folder):
    """The digits CNN moved into the user's RGB model and fine-tuned a few steps; its state dict is saved."""
    spec = importlib.util.spec_from_file_location("digits_factory", folder / "digits_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained, x, y = digits_model
    model = module.build(num_classes=10)
    model.net.load_state_dict(trained.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    rgb = x.repeat(1, 3, 1, 1)
    for step in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(rgb[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32]).backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "ft.pt")
    return model.eval(), rgb, y


@pytest.mark.slow
def test_fine_tuned_model_from_its_state_dict_serves_and_classifies_with_its_labels(user_folder, digits_model,
                                                                                      capsys):
    model, rgb, y = fine_tune(digits_model, user_folder)
    (user_folder / "labels.txt").write_text("\n".join(NAMES) + "\n")
    images = []
    for i in range(12):  # 8x8 PNGs: the pixel value is the digit's ink, 0..16 scaled to 0..255
        path = user_folder / f"digit_{i}.png"
        Image.fromarray(np.round(rgb[i, 0].numpy() * 255).astype(np.uint8), "L").save(path)
        images.append(path)
    cloud, key_path = user_folder / "cloud", user_folder / "device" / "key.json"
    assert main(["protect", "--factory", "digits_factory:build", "--state-dict", "ft.pt", "--input-size", "8",
                 "--mean", "0", "--std", "1", "--labels", "labels.txt", "--out", str(cloud),
                 "--key", str(key_path)]) == 0  # no --num-classes: 10, read from the checkpoint
    assert sorted(p.name for p in cloud.iterdir()) == ["model.onnx"]  # a factory model: ONNX only, no key
    key = Key.load(key_path)
    assert key.n_real == 10 and not key.seeded
    with torch.no_grad():  # what the user's own model says of the same 8-bit pixels
        pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255)
                              .permute(2, 0, 1) for p in images])
        expected = [NAMES[i] for i in model(pixels).argmax(1)]
    with serve_subprocess([cloud]) as (_, url):  # the device keeps the class names (the server need not publish them)
        results = classify(url, key, images, labels=load_labels(user_folder / "labels.txt"))
    got = [r.topk[0][1] for r in results]
    assert got == expected
    assert np.mean([g == NAMES[t] for g, t in zip(got, y[:12])]) >= 0.75  # and it still reads digits
    assert all(r.server_top1_is_fake for r in results)
    capsys.readouterr()
    assert main(["classify", "--model", str(cloud), "--key", str(key_path), *map(str, images[:3])]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1].split()[0] for line in printed] == expected[:3]


@pytest.mark.slow
def test_torchvision_state_dict_without_num_classes(tmp_path, capsys):
    torch.manual_seed(0)
    fine_tuned = models.load("mobilenet_v2", weights=None, num_classes=7)
    torch.save(fine_tuned.state_dict(), tmp_path / "ft.pt")
    cloud = tmp_path / "cloud"
    assert main(["protect", "mobilenet_v2", "--state-dict", str(tmp_path / "ft.pt"), "--weights", "IMAGENET1K_V1",
                 "--no-onnx", "--out", str(cloud), "--key", str(tmp_path / "key.json")]) == 0
    info, _ = read_info(cloud / "model.pt")
    assert info.n_real == 7 and info.arch_kwargs["num_classes"] == 7
    # the named weights give the preprocessing; their 1000 class names do not fit 7 classes
    assert info.extra == {"preprocess": models.preprocess_spec(models.get_weights("mobilenet_v2", "IMAGENET1K_V1"))}
    assert "seeded" not in json.loads((tmp_path / "key.json").read_text())


@pytest.mark.slow
def test_state_dict_that_does_not_fit_names_num_classes_and_creates_nothing(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(models.load("squeezenet1_0", weights=None, num_classes=5).state_dict(), tmp_path / "sq.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out = ["--out", tmp_path / "cloud", "--key", tmp_path / "device" / "key.json"]
    before = snapshot(tmp_path)
    # squeezenet's head cannot be traced (ReLU and pooling follow it): the number of classes is not read
    line = error_of(capsys, "protect", "squeezenet1_0", "--state-dict", tmp_path / "sq.pt", *out)
    assert "--num-classes" in line and "classifier.1.weight" in line
    assert "not a readable state dict" in error_of(capsys, "protect", "mobilenet_v2", "--state-dict",
                                                   tmp_path / "junk.pt", *out)
    assert "no such state dict" in error_of(capsys, "protect", "mobilenet_v2", "--state-dict", tmp_path / "no.pt",
                                            *out)
    assert snapshot(tmp_path) == before  # no cloud/ nor device/ folder


def test_factory_needs_its_preprocessing_and_valid_names(user_folder, capsys):
    out = ["--out", user_folder / "cloud", "--key", user_folder / "k.json"]
    (user_folder / "labels.txt").write_text("a\nb\n")
    before = snapshot(user_folder)
    line = error_of(capsys, "protect", "--factory", "digits_factory:build", *out, code=2)
    assert "--input-size, --mean, --std" in line
    assert "cannot import" in error_of(capsys, "protect", "--factory", "nope_module:build", *out)
    assert "no function" in error_of(capsys, "protect", "--factory", "digits_factory:nope", *out)
    assert "package.module:function" in error_of(capsys, "protect", "--factory", "digits_factory", *out, code=2)
    assert "one of them" in error_of(capsys, "protect", "mobilenet_v2", "--factory", "digits_factory:build", *out,
                                  code=2)
    line = error_of(capsys, "protect", "--factory", "digits_factory:build", "--num-classes", "3", "--input-size", "8",
                    "--mean", "0", "--std", "1", "--labels", user_folder / "labels.txt", *out, code=2)
    assert "2 class names" in line and "3 classes" in line
    assert snapshot(user_folder) == before


def test_default_weights_are_those_on_this_machine():
    entry, note = models.offline_weights("mobilenet_v2")  # torchvision's DEFAULT is V2, not installed
    assert entry.name == "IMAGENET1K_V1" and "IMAGENET1K_V2" in note
    assert models.offline_weights("efficientnet_lite0") == (models.get_weights("efficientnet_lite0", "DEFAULT"), None)


@pytest.mark.slow
def test_protect_without_weights_works_offline_and_none_is_normalised(tmp_path, capsys):
    assert main(["protect", "mobilenet_v2", "--no-onnx", "--out", str(tmp_path / "a"),
                 "--key", str(tmp_path / "a.json")]) == 0
    captured = capsys.readouterr()
    assert "using MobileNet_V2_Weights.IMAGENET1K_V1" in captured.err
    info, _ = read_info(tmp_path / "a" / "model.pt")
    assert info.weights == "MobileNet_V2_Weights.IMAGENET1K_V1" and len(info.extra["categories"]) == 1000
    assert main(["protect", "mobilenet_v2", "--weights", "none", "--num-classes", "10", "--no-onnx",
                 "--out", str(tmp_path / "b"), "--key", str(tmp_path / "b.json")]) == 0
    assert "random weights" in capsys.readouterr().err  # said, not silent
    info, _ = read_info(tmp_path / "b" / "model.pt")
    assert info.extra["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # normalised as the architecture expects
    assert "categories" not in info.extra  # ImageNet's 1000 names do not fit 10 classes
