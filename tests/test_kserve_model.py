"""The KServe custom predictor (``python -m fakegradient.serving.kserve_model``): KServe's own ModelServer (its
DataPlane, v2 REST endpoints and error handlers) serving the protected model on loopback, and
``fakegradient classify --server`` against it decrypting the same top-1 as local classification."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fakegradient import protect
from fakegradient.cli import main
from fakegradient.modelfile import write_bundle
from fakegradient.serving.kserve_model import public_config
from fakegradient.serving.onnx_model import load_model_dir

SPEC = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
STARTUP_S = 120


@pytest.fixture
def bundle(tmp_path, tiny, tiny_input) -> dict[str, Any]:
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    write_bundle(tmp_path / "cloud", protected, key, input_size=[3, 16, 16],
                 extra={"preprocess": SPEC, "categories": [f"c{i}" for i in range(10)]})
    key.save(tmp_path / "key.json")
    images = []
    for index in range(4):
        images.append(tmp_path / f"img{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(images[-1])
    return {"root": tmp_path, "key": key, "images": images}


def test_the_config_publishes_the_minimal_public_parameters(bundle):
    config = public_config(load_model_dir(bundle["root"] / "cloud", "tiny"), 8)
    assert config["max_batch_size"] == 8 and set(config["parameters"]) == {"fingerprint", "preprocess"}
    assert config["parameters"]["fingerprint"]["string_value"] == bundle["key"].model_fingerprint
    assert json.loads(config["parameters"]["preprocess"]["string_value"]) == SPEC


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def need_kserve() -> None:
    """Skip unless kserve is installed; not imported here: its protobuf messages (package ``inference``) clash
    with tritonclient.grpc's in one process, and the server runs in its own."""
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("the kserve package is not installed (it is in the dev extra)")


@contextlib.contextmanager
def kserve_server(model_dir: Path, log: Path) -> Iterator[str]:
    need_kserve()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fakegradient.serving.kserve_model", "--model_dir",
                                    str(model_dir), "--model_name", "tiny", "--max_batch", "4", "--host",
                                    "127.0.0.1", "--http_port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            with contextlib.suppress(OSError):
                if _get(url + "/v2/models/tiny/ready")[0] == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the KServe server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _printed_top1(out: str) -> list[str]:
    return re.findall(r"^\S+: (.+?) \d+\.\d%", out, flags=re.MULTILINE)


@pytest.mark.slow
def test_classify_through_kserves_model_server(bundle, capsys):
    root, images = bundle["root"], [str(p) for p in bundle["images"]]
    assert main(["classify", "--model", str(root / "cloud"), "--key", str(root / "key.json"), "--top", "1",
                 *images]) == 0
    local = _printed_top1(capsys.readouterr().out)
    assert len(local) == len(images)
    with kserve_server(root / "cloud", root / "kserve.log") as url:
        # no --model-name: the client finds the only model in KServe's model list (no repository index)
        assert main(["classify", "--server", url, "--key", str(root / "key.json"), "--labels", str(root / "cloud"),
                     "--top", "1", *images]) == 0
        assert _printed_top1(capsys.readouterr().out) == local

        status, body = _get(url + "/v2/models/tiny/config")
        assert status == 200 and set(json.loads(body)["parameters"]) == {"fingerprint", "preprocess"}
        assert _get(url + "/v2/models/other/config")[0] == 404
        metadata = json.loads(_get(url + "/v2/models/tiny")[1])
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]

        def infer(shape: list[int], values: Any, name: str = "input", datatype: str = "FP32") -> tuple[int, str]:
            payload = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": values}]}
            status, body = _get(url + "/v2/models/tiny/infer", json.dumps(payload).encode())
            return status, body.decode(errors="replace")

        assert infer([1, 3, 16, 16], [0.5] * 768)[0] == 200
        for request, message in [(([1, 3, 16, 8], [0.5] * 384), "does not match"),
                                 (([1, 3, 16, 16], [0.5]), "does not hold"),
                                 (([5, 3, 16, 16], [0.5] * 3840), "exceeds the limit of 4"),
                                 (([1, 3, 16, 16], [0.5] * 768, "x"), "exactly one input"),
                                 (([1, 3, 16, 16], [0] * 768, "input", "INT32"), "send FP32")]:
            status, text = infer(*request)
            assert status == 400 and message in text, (request[0], status, text)
        nan = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                      "data": [float("nan")] * 768}]}).encode()
        status, text = _get(url + "/v2/models/tiny/infer", nan)
        assert status == 400 and "NaN" in text.decode()


@pytest.mark.slow
def test_the_predictor_refuses_a_folder_holding_a_key(bundle, tmp_path):
    need_kserve()
    (bundle["root"] / "cloud" / "notes.txt").write_bytes((bundle["root"] / "key.json").read_bytes())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run([sys.executable, "-m", "fakegradient.serving.kserve_model", "--model_dir",
                             str(bundle["root"] / "cloud"), "--host", "127.0.0.1", "--http_port", "0"],
                            check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"^error: .*notes.txt is a key file", result.stderr, flags=re.MULTILINE), result.stderr
