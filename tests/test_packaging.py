"""The wheel ``python -m build`` makes, installed by role into fresh venvs: without extras it is the device side
only (no torch), classifies through a running server and names the extra any other command needs; with
``[serve]`` it is the cloud. The README's device command runs verbatim on the device install."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
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
    """The project's wheel, built by ``python -m build`` from a copy of the tree (nothing is written into the
    checkout; no isolation: the build backend is the venv's setuptools, offline)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src" / "fakegradient", source / "src" / "fakegradient",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("fakegradient-*.whl")
    return wheel


def make_venv(path: Path, requirement: str) -> Path:
    """A fresh venv with ``pip install requirement`` (dependencies from the index pip is configured with)."""
    run([sys.executable, "-m", "venv", str(path)])
    run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement])
    return path


# a venv with the wheel runs its own copy: without the PYTHONPATH a developer may have set to the sources
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", CLEAN_ENV)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_device_install_has_no_torch_and_classifies_through_a_server(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = make_venv(tmp_path / "device", str(wheel))
    python, cli = venv / "bin" / "python", venv / "bin" / "fakegradient"
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
        failed = subprocess.run([str(cli), *command, *args], capture_output=True, text=True, timeout=120,
                                env=CLEAN_ENV)
        assert failed.returncode == 1
        (line,) = failed.stderr.splitlines()  # one line, no traceback
        assert line == f"error: fakegradient {command[0]} needs the [{extra}] extra: in a clone of fakegradient, " \
                       f"pip install '.[{extra}]'", line
    assert not (tmp_path / "x").exists()
    failed = subprocess.run([str(cli), "info", str(image)], capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
    assert failed.returncode == 1 and failed.stderr.splitlines() == [  # says what it reads, needs no torch
        f"error: {image} is not a key, device-head or protected-model file (a key file, model.pt, model.onnx or "
        "their folder)"]

    # at the Python level: the extra, not the module torch (nor one deep in a dependency)
    failed = subprocess.run([str(python), "-c", "import fakegradient.models"], capture_output=True, text=True,
                            timeout=120, env=CLEAN_ENV)
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("fakegradient.errors.MissingExtra: fakegradient.models needs the [protect] extra"), last
    for attribute, extra in (("fakegradient.protect", "protect"), ("fakegradient.serving.serve", "serve")):
        package, name = attribute.rsplit(".", 1)
        lazy = subprocess.run([str(python), "-c", f"import {package}\ntry:\n    {package}.{name}\n"
                               "except ModuleNotFoundError as exc:\n    print(type(exc).__name__, exc)"],
                              capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
        assert lazy.stdout.startswith(f"MissingExtra {attribute} needs the [{extra}] extra"), lazy.stdout


def test_the_wheel_carries_license_and_types(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "fakegradient/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "fakegradient/weights.py" in names and not any(n.startswith("scripts/") for n in names)
    assert "License: MIT" in metadata or "License-Expression: MIT" in metadata
    assert "Classifier: Typing :: Typed" in metadata and "Project-URL: " in metadata
    for extra in ("protect", "serve", "eval", "docs", "dev"):
        assert f"Provides-Extra: {extra}" in metadata, extra


def readme_device_command() -> str:
    """The README's device command, verbatim: the tour's ``classify --server`` line."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)
    (command,) = [line for block in blocks for line in block.splitlines() if "fakegradient classify --server" in line]
    return command


@pytest.mark.slow
def test_readme_device_command_on_the_device_install_against_the_serve_install(tmp_path):
    """Done when of the docs issue: a fresh venv with only the wheel runs the README's device command, verbatim,
    against a server started from a venv with the wheel's [serve] extra, and prints the photo's real class name
    (which travels in the key file: the device has no other file)."""
    photo = Path(pytest.importorskip("foolbox").__file__).parent / "data" / "imagenet_00_243.jpg"
    wheel = build_wheel(tmp_path)
    device = make_venv(tmp_path / "device", str(wheel))
    cloud = make_venv(tmp_path / "cloud", f"{wheel}[serve]")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(photo, work / photo.name)
    # protect where torch is (this venv), as the README's tour does
    run([sys.executable, "-m", "fakegradient.cli", "protect", "mobilenet_v2", "--out", "cloud/mnv2", "--key",
         "device/mnv2.key"], cwd=work, env=CLEAN_ENV | {"PYTHONPATH": str(ROOT / "src")})
    command = readme_device_command()
    assert "--labels" not in command and "imagenet_00_243.jpg" in command
    with serve_subprocess([work / "cloud" / "mnv2"], python=cloud / "bin" / "python") as (_, url):
        args = shlex.split(command.split("#")[0].replace("http://127.0.0.1:8000", url))
        assert args[0] == "fakegradient"
        result = run([str(device / "bin" / "fakegradient"), *args[1:]], cwd=work)
    assert result.stdout.startswith("imagenet_00_243.jpg: bull mastiff"), result.stdout


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
