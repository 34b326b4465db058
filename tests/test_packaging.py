"""``pip install fakegradient`` is the device side only: the wheel, installed without extras into a fresh venv,
has no torch, classifies through a running server, and names the extra any other command needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image
from test_server_support import serve_subprocess

import fakegradient
from fakegradient.modelfile import write_bundle
from fakegradient.models import make_spec
from fakegradient.serving.client import preprocess

ROOT = Path(__file__).resolve().parents[1]
SPEC = make_spec(16, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], resize=20)


def build_wheel(tmp_path: Path) -> Path:
    """The project's wheel, built from a copy of the tree (nothing is written into the checkout)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src" / "fakegradient", source / "src" / "fakegradient",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)])
    (wheel,) = (tmp_path / "dist").glob("fakegradient-*.whl")
    return wheel


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_device_install_has_no_torch_and_classifies_through_a_server(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "device"
    run([sys.executable, "-m", "venv", str(venv)])
    python, cli = venv / "bin" / "python", venv / "bin" / "fakegradient"
    # dependencies come from the package index pip is configured with (the local mirror offline)
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)])
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"]).stdout.lower()
    assert "torch" not in installed and "onnx" not in installed and "fastapi" not in installed
    run([str(python), "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"])

    # a protected model (made here, with torch) in its cloud folder, and a photo on the device
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).eval()
    protected, key = fakegradient.protect(model, example_input=torch.rand(2, 3, 16, 16))
    write_bundle(tmp_path / "cloud", protected, key, input_size=[3, 16, 16], extra={"preprocess": SPEC})
    key.save(tmp_path / "key.json")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 24, 3), dtype=np.uint8)).save(image)
    with torch.no_grad():
        expected = int(model(torch.from_numpy(preprocess(image, SPEC))[None]).argmax())

    with serve_subprocess([tmp_path / "cloud"]) as (_, url):
        result = run([str(cli), "classify", "--server", url, "--key", str(tmp_path / "key.json"), str(image),
                      "--top", "1"])
    assert result.stdout.startswith(f"photo.png: class {expected} ")

    for command, extra in ((["protect", "mobilenet_v2"], "protect"), (["serve", str(tmp_path / "cloud")], "serve"),
                           (["evaluate"], "eval")):
        args = ["--out", str(tmp_path / "x"), "--key", str(tmp_path / "x.json")] if command[0] == "protect" else []
        failed = subprocess.run([str(cli), *command, *args], capture_output=True, text=True, timeout=120)
        assert failed.returncode == 1
        (line,) = failed.stderr.splitlines()  # one line, no traceback
        assert f"pip install 'fakegradient[{extra}]'" in line, line
    assert not (tmp_path / "x").exists()


def test_a_missing_module_names_the_extra_that_installs_it():
    from fakegradient._lazy import missing_extra

    assert missing_extra("torch", "protect") == "protect"
    assert missing_extra("onnxruntime.capi", "serve") == "serve"
    assert missing_extra("torch", "serve") == "protect"  # classify --model model.pt on a cloud-only install
    assert missing_extra("timm", "protect") == "timm"
    assert missing_extra("ray", "eval") == "ray"
    assert missing_extra("art", "eval") == "eval"  # adversarial-robustness-toolbox installs the module `art`
    assert missing_extra("no_such_module", "protect") is None  # every [protect] module is here: a real bug


@pytest.mark.slow
def test_the_wheel_holds_no_study_code(tmp_path):
    """Built from a copy of the whole tree (studies/, scripts/ and tests/ beside src/): only the library."""
    import zipfile

    skip = shutil.ignore_patterns(".*", "__pycache__", "*.pyc", "reports", "out", "*.egg-info", "build", "dist")
    shutil.copytree(ROOT, tmp_path / "tree", ignore=skip)
    assert (tmp_path / "tree" / "studies" / "kit.py").is_file()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(tmp_path / "tree")])
    (wheel,) = (tmp_path / "dist").glob("fakegradient-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fakegradient/evaluation/runner.py" in names and "fakegradient/evaluation/intervals.py" in names
    top = {name.split("/")[0] for name in names}
    assert top <= {"fakegradient", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    study_code = [n for n in names if Path(n).stem in ("mnist", "class_study", "ablations", "kit", "seven_mnist")]
    assert not study_code, study_code
