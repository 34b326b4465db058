"""Every code block of README.md runs as written (shell and Python), in order, in one scratch folder.

How each block runs is decided here, by a line it contains, so that a new block with no entry fails the test:
- ``run``: bash (``set -euo pipefail``) or Python, in the scratch folder, with this checkout's sources first on
  the path and the venv's ``fakegradient`` on PATH;
- ``server``: a server block, started in the background by the test on a free port (the block's ``--port 8000``
  and the later blocks' ``http://127.0.0.1:8000`` become that port), and stopped at the end;
- ``not run``, with the reason (installing packages, or the test suite itself).
The slow test runs them; the fast tests check that every block has a mode and what ``make demo`` would run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
PHOTO = "imagenet_00_243.jpg"  # foolbox's first ImageNet photo: a bull mastiff

# (a line of the block, mode, why not run / what is checked)
MODES = [
    (
        "pip install .  ",
        "not run",
        "installs packages into the environment: tests/test_packaging.py builds the wheel "
        "and installs the device and cloud roles from it; `fakegradient weights` is tests/test_weights.py's",
    ),
    (
        "make demo",
        "make",
        "`make test` is this test suite; `make demo` runs as its commands (see run_make_block): "
        "`make -n demo` must list only the venv's commands, which run here",
    ),
    ("fakegradient protect mobilenet_v2 --out cloud/mnv2", "run", ""),
    ("fakegradient serve cloud/mnv2", "server", ""),
    ("fakegradient classify --server", "run", "prints the photo's real class, read from the key file"),
    ("protected, key = fakegradient.protect(model)", "run", ""),
]


def blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in FENCE.findall((ROOT / "README.md").read_text())]


def mode_of(code: str) -> tuple[str, str]:
    matches = [(mode, why) for line, mode, why in MODES if line in code]
    assert len(matches) == 1, f"README block has {len(matches)} modes in tests/test_readme.py: {code[:200]!r}"
    return matches[0]


def environment() -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "OMP_NUM_THREADS": "1",
    }


def run_block(lang: str, code: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    command = ["bash", "-c", "set -euo pipefail\n" + code] if lang == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment()
    )
    assert result.returncode == 0, (
        f"README block failed ({result.returncode}):\n{code}\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}"
    )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def background(code: str, cwd: Path, port: int):
    """The server block on ``port``, until it answers ready; stopped (its process group) on exit."""
    server = subprocess.Popen(
        ["bash", "-c", "exec " + code.strip().split("#")[0].replace("--port 8000", f"--port {port}")],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise AssertionError(f"the README's server exited: {server.stdout.read()}") from None
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_readme_block_has_a_mode():
    found = blocks()
    assert len(found) == len(MODES)
    for lang, code in found:
        assert lang in ("bash", "python"), lang
        mode_of(code)


def make_demo_commands() -> list[str]:
    """What ``make demo`` runs once installed (``make -n``, the venv already made: nothing is run)."""
    venv = Path(sys.prefix)
    if not (venv / ".installed").is_file():
        pytest.skip(f"{venv} was not made by `make install` (no .installed stamp)")
    result = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert not any("apt" in line or "chromium" in line for line in lines), lines
    # only the venv's commands; a stale stamp (pyproject.toml newer) would list pip installs, which are not run
    return [line for line in lines if line.startswith(str(venv / "bin" / "fakegradient"))]


def test_make_demo_changes_nothing_outside_the_venv():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    commands = make_demo_commands()  # asserts that no line calls apt or installs chromium
    assert [c.split("/bin/", 1)[1].split(" --out")[0] for c in commands] == [
        "fakegradient weights",
        "fakegradient demo",
        "fakegradient evaluate",
    ], commands


@pytest.mark.slow
def test_readme_blocks_run_in_order(tmp_path):
    """All README blocks, in order, in one folder: protect, serve, classify through the server, the Python API,
    and the demo's own commands."""
    photos = Path(pytest.importorskip("foolbox").__file__).parent / "data"
    shutil.copy(photos / PHOTO, tmp_path / PHOTO)
    port = free_port()
    with contextlib.ExitStack() as stack:
        for lang, code in blocks():
            mode, _ = mode_of(code)
            code = code.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
            if mode == "not run":
                continue
            if mode == "server":
                stack.enter_context(background(code, tmp_path, port))
            elif mode == "make":
                run_make_block(tmp_path)
            else:
                result = run_block(lang, code, tmp_path)
                if "classify --server" in code:
                    assert result.stdout.startswith(f"{PHOTO}: bull mastiff"), result.stdout


def run_make_block(cwd: Path) -> None:
    """``make demo`` as the commands ``make -n demo`` lists (the venv is this one: nothing is installed), with
    the evaluation written under ``cwd``."""
    if shutil.which("make") is None or not (Path(sys.prefix) / ".installed").is_file():
        return  # said by test_make_demo_changes_nothing_outside_the_venv's skip
    for command in make_demo_commands():
        command = command.replace("--out out/evaluation", f"--out {cwd / 'evaluation'}")
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=1800, env=environment()
        )
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    assert (cwd / "evaluation" / "report.md").is_file()
