"""The offloading workflow for real: a v2 server subprocess holding only the protected model."""

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server_support import in_thread, serve_subprocess

from fakegradient import Key
from fakegradient.cli import main
from fakegradient.data import foolbox_imagenet, load_batch
from fakegradient.serving.client import InferenceClient, classify, load_labels, preprocess
from fakegradient.serving.triton import export_triton


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud")
    for name in ("mnv2", "other"):
        assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--out", str(root / name),
                     "--key", str(root / f"{name}.key")]) == 0
    with serve_subprocess([root / "mnv2"], "--max-batch", "8", "--max-body-mb", "8", "--threads", "1") as (
            server, url):
        yield {"root": root, "url": url, "key": Key.load(root / "mnv2.key"), "server": server}


def call(url: str, body: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, headers, JSON body) of one request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def post(url, body: bytes, headers=None):
    status, _, payload = call(url, body, headers=headers)
    return status, payload


def json_request(x, name="input", datatype="FP32"):
    return json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                   "data": x.reshape(-1).tolist()}]}).encode()


def test_end_to_end_20_photos_match_the_local_original(cloud, photos_top1):
    paths = [s.path for s in foolbox_imagenet()]
    results = classify(cloud["url"], cloud["key"], paths, k=1, labels=load_labels(cloud["root"] / "mnv2"))
    assert [r.topk[0][0] for r in results] == photos_top1  # decrypted == original top-1, all 20
    assert all(r.server_top1_is_fake for r in results)  # the cloud's top-1 is always a fake output
    assert results[0].topk[0][1] == "bull mastiff"


def test_client_preprocessing_equals_torchvision(mobilenet_imagenet):
    _, weights = mobilenet_imagenet
    from fakegradient import models

    spec = models.preprocess_spec(weights)
    paths = [s.path for s in foolbox_imagenet()]
    ours = np.stack([preprocess(p, spec) for p in paths])
    theirs = load_batch(paths, weights.transforms()).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_tritonclient_talks_to_the_server(cloud):
    import tritonclient.http as httpclient

    host = cloud["url"].removeprefix("http://")
    triton = httpclient.InferenceServerClient(host)
    assert triton.is_server_live() and triton.is_model_ready("mnv2")
    meta = triton.get_model_metadata("mnv2")
    assert meta["outputs"][0]["shape"] == [-1, 2000]
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    ours = InferenceClient(cloud["url"]).infer(InferenceClient(cloud["url"]).model("mnv2"), x)
    for binary in (True, False):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = triton.infer("mnv2", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(out.as_numpy("logits"), ours, rtol=1e-6, atol=1e-5)
    config = triton.get_model_config("mnv2")
    assert config["parameters"]["fingerprint"]["string_value"] == cloud["key"].model_fingerprint
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as error:  # tritonclient reads our {"error": ...} bodies
        triton.get_model_metadata("nope")
    assert error.value.message() == "unknown model 'nope'; served: ['mnv2']" and error.value.status() == "404"


def test_bad_requests_get_4xx_and_the_server_keeps_working(cloud):
    url = cloud["url"] + "/v2/models/mnv2/infer"
    good = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    nan, inf = good.copy(), good.copy()
    nan[0, 0, 0, 0], inf[0, 1, 2, 3] = np.nan, -np.inf
    assert b"NaN" in json_request(nan) and b"-Infinity" in json_request(inf)  # what Python's json writes
    cases = {
        "malformed JSON": (b'{"inputs": [', 400, "malformed JSON"),
        "no inputs": (b'{"outputs": []}', 400, "'inputs'"),
        "wrong shape": (json_request(good[:, :, :100]), 400, "does not match"),
        "wrong dtype": (json_request(good, datatype="INT64"), 400, "INT64"),
        "wrong input name": (json_request(good, name="x"), 400, "unknown input 'x'"),
        "NaN": (json_request(nan), 400, "NaN or infinite"),
        "infinity": (json_request(inf), 400, "NaN or infinite"),
        "batch over limit": (json_request(np.zeros((9, 3, 224, 224), np.float32)), 413, "batch of 9"),
        "body over limit": (b" " * (9 * 2**20), 413, "limit"),
        "strings as data": (json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224],
                                                    "datatype": "FP32", "data": ["a"]}]}).encode(),
                            400, "numbers only"),
    }
    for name, (body, status, fragment) in cases.items():
        code, payload = post(url, body)
        assert code == status, (name, code, payload)
        assert list(payload) == ["error"] and fragment in payload["error"], (name, payload)
        ok, answer = post(url, json_request(good))  # still up, still right
        assert ok == 200 and answer["outputs"][0]["shape"] == [1, 2000], name
    code, payload = post(cloud["url"] + "/v2/models/nope/infer", json_request(good))
    assert code == 404 and payload == {"error": "unknown model 'nope'; served: ['mnv2']"}
    assert call(cloud["url"] + "/v2/nowhere")[::2] == (404, {"error": "Not Found: GET /v2/nowhere"})
    assert call(url)[::2] == (405, {"error": "Method Not Allowed: GET /v2/models/mnv2/infer"})
    assert cloud["server"].poll() is None


def run_client(*args, block_torch=False):
    prelude = ("import sys\nclass _Block:\n    def find_spec(self, name, *a):\n"
               "        if name == 'torch' or name.startswith('torch.'):\n"
               "            raise ImportError('torch is blocked in this test')\n"
               "sys.meta_path.insert(0, _Block())\n") if block_torch else "import sys\n"
    code = prelude + "from fakegradient.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_device_client_runs_without_torch(cloud):
    photos = [s.path for s in foolbox_imagenet()[:2]]
    result = run_client("classify", "--server", cloud["url"], "--key", cloud["root"] / "mnv2.key", "--top", "1",
                        "--labels", cloud["root"] / "mnv2", *photos, block_torch=True)  # names kept on the device
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imagenet_00_243.jpg: bull mastiff")
    blocked = run_client("demo", block_torch=True)  # the blocker really blocks torch
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr


def test_client_errors(cloud, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    bad = run_client("classify", "--server", cloud["url"], "--key", cloud["root"] / "mnv2.key", text)
    assert bad.returncode != 0 and "not a readable image" in bad.stderr and "Traceback" not in bad.stderr
    photo = foolbox_imagenet()[0].path
    wrong = run_client("classify", "--server", cloud["url"], "--key", cloud["root"] / "other.key", photo)
    assert wrong.returncode != 0 and "another model" in wrong.stderr and "Traceback" not in wrong.stderr
    down = run_client("classify", "--server", "http://127.0.0.1:1", "--key", cloud["root"] / "mnv2.key", photo)
    assert down.returncode != 0 and "cannot reach" in down.stderr


def test_per_cloud_keys_differ(cloud):
    a, b = Key.load(cloud["root"] / "mnv2.key"), Key.load(cloud["root"] / "other.key")
    assert not np.array_equal(a.permutation, b.permutation)
    assert a.model_fingerprint != b.model_fingerprint
    assert (cloud["root"] / "mnv2" / "model.onnx").read_bytes() != (cloud["root"] / "other" / "model.onnx").read_bytes()


def test_load_8_clients_25_requests(cloud):
    key = cloud["key"]
    client = InferenceClient(cloud["url"])
    model = client.model("mnv2")
    from fakegradient import models

    spec = models.preprocess_spec(models.get_weights("mobilenet_v2", "IMAGENET1K_V1"))
    photos = [preprocess(s.path, spec)[None] for s in foolbox_imagenet()[:8]]
    expected = [int(key.top1(client.infer(model, p))[0]) for p in photos]

    def worker(i: int) -> tuple[int, int]:
        failures = wrong = 0
        c = InferenceClient(cloud["url"])
        for _ in range(25):
            try:
                wrong += int(key.top1(c.infer(model, photos[i]))[0]) != expected[i]
            except Exception:
                failures += 1
        return failures, wrong

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert sum(f for f, _ in results) == 0
    assert sum(w for _, w in results) == 0


def test_triton_export(cloud, tmp_path):
    path = export_triton(cloud["root"] / "mnv2", tmp_path / "repo", max_batch=16)
    assert path == tmp_path / "repo" / "mnv2" / "1" / "model.onnx" and path.is_file()
    config = (tmp_path / "repo" / "mnv2" / "config.pbtxt").read_text()
    for expected in ('platform: "onnxruntime_onnx"', "max_batch_size: 16", "dims: [ 3, 224, 224 ]",
                     "dims: [ 2000 ]", "dynamic_batching", cloud["key"].model_fingerprint):
        assert expected in config


def test_server_and_export_refuse_a_folder_holding_a_key(cloud, tmp_path):
    from fakegradient import FakeGradientError
    from fakegradient.serving.onnx_model import load_model_dir

    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "model.onnx").write_bytes((cloud["root"] / "mnv2" / "model.onnx").read_bytes())
    (leaky / "key.json").write_bytes((cloud["root"] / "mnv2.key").read_bytes())
    with pytest.raises(FakeGradientError, match="must never reach the server"):
        load_model_dir(leaky)
    result = run_client("serve", leaky, "--port", str(free_port()))
    assert result.returncode != 0 and "key file" in result.stderr


def test_a_model_onnx_with_50_flipped_bytes_is_refused(cloud, tmp_path):
    """The issue's corruption: 50 bytes flipped in the last two thirds of model.onnx. The head's weights
    (the first half of the file) take some of them: the fingerprint computed at load differs, and `serve`
    refuses in one line instead of serving confident wrong labels."""
    folder = tmp_path / "mnv2"
    shutil.copytree(cloud["root"] / "mnv2", folder)
    data = bytearray((folder / "model.onnx").read_bytes())
    for offset in np.random.default_rng(0).choice(np.arange(len(data) // 3, len(data)), 50, replace=False):
        data[offset] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    result = run_client("serve", folder, "--port", "0")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {folder / 'model.onnx'}: the weights or graph do not match the "
                                    "digest in its metadata"), result.stderr


class StubSession:
    """Stands in for an ONNX Runtime session: logits = x @ weights, or a crash with a private detail."""

    def __init__(self, weights: np.ndarray | None):
        self.weights = weights

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.weights is None:
            raise RuntimeError("secret detail of /srv/models/broken")
        return [feeds["input"] @ self.weights]


@pytest.fixture(scope="module")
def stub_server():
    """``create_app`` on two stub models (one crashing) in a uvicorn thread, plus a probe route for 422."""
    import uvicorn

    from fakegradient.serving.onnx_model import ServedModel
    from fakegradient.serving.server import Limits, create_app

    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    models = [ServedModel(name, Path(f"{name}.onnx"), StubSession(w), "input", [-1, 2], "logits", [-1, 3],
                          {"fakegradient.fingerprint": "f00d"})
              for name, w in (("stub", weights), ("broken", None))]
    app = create_app(models, Limits(max_body_bytes=2**16, max_batch=4))

    @app.get("/probe/{n}")
    def probe(n: int):
        return {"n": n}

    with in_thread(uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))) as (host, port):
        yield {"url": f"http://{host}:{port}", "weights": weights}


def stub_request(rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [len(rows), 2], "datatype": "FP32",
                                   "data": [v for row in rows for v in row]}]}).encode()


MODEL_ENDPOINTS = [("GET", "/v2/models/{}"), ("GET", "/v2/models/{}/versions/1"),
                   ("GET", "/v2/models/{}/ready"), ("GET", "/v2/models/{}/config"),
                   ("POST", "/v2/models/{}/infer"), ("POST", "/v2/models/{}/versions/1/infer")]


@pytest.mark.parametrize("method, path", MODEL_ENDPOINTS)
def test_unknown_model_is_a_json_404_on_every_model_endpoint(stub_server, method, path):
    body = stub_request([[1.0, 2.0]]) if method == "POST" else None
    status, _, payload = call(stub_server["url"] + path.format("stub"), body, method)
    assert status == 200 and "error" not in payload  # the route itself works
    status, headers, payload = call(stub_server["url"] + path.format("nope"), body, method)
    assert status == 404 and headers["content-type"] == "application/json"
    assert payload == {"error": "unknown model 'nope'; served: ['broken', 'stub']"}


def test_stub_infer_answers_json_and_binary(stub_server):
    url = stub_server["url"] + "/v2/models/stub/infer"
    status, payload = post(url, stub_request([[1.0, 2.0], [0.5, -1.0]]))
    expected = np.array([[1.0, 2.0], [0.5, -1.0]], np.float32) @ stub_server["weights"]
    assert status == 200 and payload["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(payload["outputs"][0]["data"], (2, 3)), expected)
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 8}}],
                       "parameters": {"binary_data_output": True}}).encode()
    request = urllib.request.Request(url, data=head + np.float32([3, 4]).tobytes(),
                                     headers={"Inference-Header-Content-Length": str(len(head))})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw, length = response.read(), int(response.headers["Inference-Header-Content-Length"])
    expected = np.float32([3, 4]) @ stub_server["weights"]
    np.testing.assert_allclose(np.frombuffer(raw[length:], "<f4"), expected)


@pytest.mark.parametrize("body, headers, status, message", [
    (b"{", {}, 400, "malformed JSON"),
    (stub_request([[1.0, 2.0]]), {"Inference-Header-Content-Length": "abc"}, 400,
     "Inference-Header-Content-Length must be a non-negative integer, got 'abc'"),
    (stub_request([[1.0, 2.0]]), {"Inference-Header-Content-Length": "0"}, 400, "does not fit a body"),
    (stub_request([[1.0, 2.0]] * 5), {}, 413, "batch of 5 exceeds the limit of 4"),
    (b" " * 2**17, {}, 413, "request body exceeds the limit of 65536 bytes"),
])
def test_typed_errors_become_json_bodies(stub_server, body, headers, status, message):
    headers = {"Content-Type": "application/json", **headers}
    code, _, payload = call(stub_server["url"] + "/v2/models/stub/infer", body, headers=headers)
    assert code == status and list(payload) == ["error"] and message in payload["error"], (code, payload)
    # the body is read (and its size judged) before the model is looked up, then the lookup comes first
    code, _, payload = call(stub_server["url"] + "/v2/models/nope/infer", body, headers=headers)
    assert code == (413 if len(body) > 2**16 else 404) and list(payload) == ["error"], (code, payload)


def test_fastapi_own_errors_are_json_bodies(stub_server):
    url = stub_server["url"]
    assert call(url + "/v2/nowhere")[::2] == (404, {"error": "Not Found: GET /v2/nowhere"})
    assert call(url + "/v2/models/stub/extra/path", b"{}")[::2] == (
        404, {"error": "Not Found: POST /v2/models/stub/extra/path"})
    status, headers, payload = call(url + "/v2/models/stub/infer")  # GET on an infer route
    assert (status, payload) == (405, {"error": "Method Not Allowed: GET /v2/models/stub/infer"})
    assert headers["allow"] == "POST"
    assert call(url + "/v2/health/live", b"{}")[::2] == (
        405, {"error": "Method Not Allowed: POST /v2/health/live"})
    status, _, payload = call(url + "/probe/abc")  # request validation (no served route has typed params)
    assert status == 422 and list(payload) == ["error"]
    assert payload["error"].startswith("invalid request: path.n: Input should be a valid integer"), payload
    assert call(url + "/probe/7")[::2] == (200, {"n": 7})


def test_unexpected_exception_is_a_generic_500_and_logged(stub_server, caplog):
    caplog.set_level(logging.ERROR)
    status, _, payload = call(stub_server["url"] + "/v2/models/broken/infer", stub_request([[1.0, 2.0]]))
    assert (status, payload) == (500, {"error": "internal server error"})  # no detail, no traceback
    for _ in range(100):  # the server logs the traceback after answering
        if "secret detail" in caplog.text:
            break
        time.sleep(0.02)
    assert "secret detail" in caplog.text and "Traceback" in caplog.text
    assert post(stub_server["url"] + "/v2/models/stub/infer", stub_request([[1.0, 2.0]]))[0] == 200
