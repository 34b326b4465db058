"""``export-triton``: the repository for Triton's ONNX Runtime backend (config checked in test_client_triton.py)
and for its Python backend, whose ``model.py`` is run here twice: in process against a stand-in of Triton's
``triton_python_backend_utils`` (fast), and by a real ``tritonserver`` — the one bundled in ``nvidia-pytriton``,
which ships the Python backend only — with ``fakegradient classify --server``, ``tritonclient.http`` and
``tritonclient.grpc`` decrypting the same top-1 as local classification (slow)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fakegradient import protect
from fakegradient.classify import predictions
from fakegradient.cli import main
from fakegradient.modelfile import write_bundle
from fakegradient.serving.triton import export_triton

SPEC = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
STARTUP_S = 180  # tritonserver with a Python-backend model starts in ~10 s on 2 idle cores


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
    return {"root": tmp_path, "key": key, "model": tiny, "images": images}


def test_the_python_backend_repository(bundle):
    root = bundle["root"]
    assert main(["export-triton", str(root / "cloud"), str(root / "repo"), "--name", "tiny", "--max-batch", "4",
                 "--backend", "python"]) == 0
    folder = root / "repo" / "tiny"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1", "1/model.onnx", "1/model.py", "config.pbtxt"]
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "platform" not in config and "max_batch_size: 4" in config
    assert f'string_value: "{bundle["key"].model_fingerprint}"' in config
    source = (folder / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    digest = hashlib.sha256((folder / "1" / "model.onnx").read_bytes()).hexdigest()
    assert f'MODEL_SHA256 = "{digest}"' in source
    # exported again for the onnxruntime backend: no model.py left behind
    assert main(["export-triton", str(root / "cloud"), str(root / "repo"), "--name", "tiny"]) == 0
    assert not (folder / "1" / "model.py").exists() and 'platform: "onnxruntime_onnx"' in folder.joinpath(
        "config.pbtxt").read_text()


def test_an_unknown_backend_is_refused(bundle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export-triton", str(bundle["root"] / "cloud"), str(bundle["root"] / "repo"), "--backend", "tf"])
    assert exit_.value.code == 2 and "--backend" in capsys.readouterr().err


# --- model.py in process, against a stand-in of Triton's triton_python_backend_utils --------------------------


class _Tensor:
    """What model.py uses of pb_utils.Tensor: DLPack both ways."""

    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.array.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name: str, array: Any) -> _Tensor:
        return cls(name, np.from_dlpack(array).copy())


def _stand_in_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")

    class TritonModelException(Exception):
        pass

    module.Tensor = _Tensor
    module.TritonModelException = TritonModelException
    module.TritonError = lambda message: message
    module.InferenceResponse = lambda output_tensors, error=None: (output_tensors, error)
    module.get_input_tensor_by_name = lambda request, name: request[name]
    return module


def _load_model_py(folder: Path, monkeypatch) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stand_in_pb_utils())
    spec = importlib.util.spec_from_file_location("exported_model", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"input": [{"name": "input"}], "output": [{"name": "logits"}]}
    model.initialize({"model_config": json.dumps(config), "model_repository": str(folder), "model_version": "1"})
    return model


def test_model_py_answers_each_request_of_a_batch_with_its_own_rows(bundle, monkeypatch):
    root = bundle["root"]
    export_triton(root / "cloud", root / "repo", name="tiny", backend="python")
    model = _load_model_py(root / "repo" / "tiny", monkeypatch)
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    requests = [{"input": _Tensor("input", x[:2])}, {"input": _Tensor("input", x[2:3])},
                {"input": _Tensor("input", x[3:])}]
    responses = model.execute(requests)
    assert [error for _, error in responses] == [None] * 3
    served = np.concatenate([tensors[0].array for tensors, _ in responses])
    key = bundle["key"]
    with torch.no_grad():
        expected = bundle["model"](torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(key.top1(served), expected)
    assert [len(tensors[0].array) for tensors, _ in responses] == [2, 1, 2]
    # a request ONNX Runtime refuses: every request of the batch gets the error, none a crash
    bad = model.execute([{"input": _Tensor("input", x[:1, :, :8])}])
    assert bad[0][0] == [] and "inference failed" in bad[0][1]


def test_model_py_refuses_a_model_onnx_other_than_the_exported_one(bundle, monkeypatch):
    root = bundle["root"]
    export_triton(root / "cloud", root / "repo", name="tiny", backend="python")
    path = root / "repo" / "tiny" / "1" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(Exception, match="not the model.onnx exported"):
        _load_model_py(root / "repo" / "tiny", monkeypatch)


# --- a real tritonserver (nvidia-pytriton's, Python backend only) ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pytriton_dist() -> tuple[Path, Path]:
    """(pytriton's tritonserver folder, its bundled libraries); skips when nvidia-pytriton is not installed."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        pytest.skip("nvidia-pytriton is not installed (make install puts it in: pip install --no-deps "
                    "nvidia-pytriton); it bundles the only tritonserver this machine can get")
    root = Path(spec.origin).parent
    return root / "tritonserver", root.parent / "nvidia_pytriton.libs"


def _backend_folder(dist: Path, into: Path) -> Path:
    """Triton's backends folder: the Python backend with the stub for this Python (as pytriton lays it out)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    python = into / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(dist / "backends" / "python" / name, python / name)
    shutil.copy(stub, python / "triton_python_backend_stub")
    return into / "backends"


def _environment(libs: Path) -> dict[str, str]:
    """The stub embeds Python and finds this venv (numpy, onnxruntime) through ``python3`` on PATH; this
    interpreter's libpython goes first so that the stub runs the same Python build."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    first = [libdir] if Path(libdir, sysconfig.get_config_var("INSTSONAME") or "-").is_file() else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*first, str(libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def tritonserver(repository: Path, workdir: Path, model: str) -> Iterator[dict[str, Any]]:
    """Start nvidia-pytriton's tritonserver on ``repository`` (loopback, free ports) and wait until ``model`` is
    ready; yields its HTTP and gRPC addresses and its log. Skips only when the binary cannot start at all."""
    dist, libs = _pytriton_dist()
    backends = _backend_folder(dist, workdir)
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    command = [str(dist / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={http}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
               "--allow-metrics=false", "--model-control-mode=none", "--exit-on-error=false",
               "--strict-readiness=false", "--log-verbose=0"]
    log_path = workdir / "tritonserver.log"
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(libs))
        except OSError as exc:
            pytest.skip(f"tritonserver cannot be executed here: {exc}")
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _ready(f"http://127.0.0.1:{http}/v2/models/{model}/ready"):
            log_text = log_path.read_text(errors="replace")
            if process.poll() is not None:
                if "error while loading shared libraries" in log_text or "cannot execute" in log_text:
                    pytest.skip(f"tritonserver cannot start here: {log_text.strip().splitlines()[-1]}")
                pytest.fail(f"tritonserver exited ({process.returncode}):\n{log_text[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"model {model!r} not ready after {STARTUP_S} s:\n{log_text[-3000:]}")
            time.sleep(0.25)
        yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _printed_top1(out: str) -> list[str]:
    """The decrypted top-1 label of each line ``classify`` printed."""
    return re.findall(r"^\S+: (.+?) \d+\.\d%", out, flags=re.MULTILINE)


@pytest.mark.slow
def test_a_real_tritonserver_serves_the_python_backend_repository(bundle, capsys):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    root, key, images = bundle["root"], bundle["key"], bundle["images"]
    export_triton(root / "cloud", root / "repo", name="tiny", max_batch=4, backend="python")
    # a second model whose model.onnx is not the exported one: Triton must refuse to load it
    shutil.copytree(root / "repo" / "tiny", root / "repo" / "tampered")
    config = root / "repo" / "tampered" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "tiny"', 'name: "tampered"'))
    onnx_file = root / "repo" / "tampered" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")

    assert main(["classify", "--model", str(root / "cloud"), "--key", str(root / "key.json"), "--top", "1",
                 *map(str, images)]) == 0
    local = _printed_top1(capsys.readouterr().out)
    assert len(local) == len(images)

    with tritonserver(root / "repo", root, "tiny") as server:
        assert not _ready(f"http://{server['http']}/v2/models/tampered/ready")
        assert "not the model.onnx exported" in server["log"].read_text(errors="replace")

        assert main(["classify", "--server", f"http://{server['http']}", "--model-name", "tiny", "--key",
                     str(root / "key.json"), "--labels", str(root / "cloud"), "--top", "1", *map(str, images)]) == 0
        assert _printed_top1(capsys.readouterr().out) == local

        from fakegradient.serving.client import preprocess

        batch = np.stack([preprocess(p, SPEC) for p in images])
        with torch.no_grad():
            expected = bundle["model"](torch.from_numpy(batch)).argmax(1).tolist()
        assert [f"c{i}" for i in expected] == local  # the original model's classes
        for module, address in ((httpclient, server["http"]), (grpcclient, server["grpc"])):
            client = module.InferenceServerClient(address)
            tensor = module.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            served = client.infer("tiny", [tensor]).as_numpy("logits")
            assert served.shape == (len(images), key.n_outputs)
            assert [p.topk[0][0] for p in predictions(key, served, k=1)] == expected, module.__name__
