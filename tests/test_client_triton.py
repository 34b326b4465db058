"""The device client against Triton: Triton's model metadata has no ``parameters``, so the client reads the
fingerprint and the preprocessing from the model's config, where ``export-triton`` writes them
(config.pbtxt ``parameters``, JSON-encoded strings). The Triton here is a stand-in answering as Triton does:
metadata without parameters, the config with config.pbtxt's parameters, inference by ONNX Runtime."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fakegradient import FakeGradientError, Key, protect
from fakegradient.modelfile import write_bundle
from fakegradient.serving.client import classify, preprocess
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.protocol import HEADER_LENGTH, build_infer_response, parse_infer_request
from fakegradient.serving.triton import export_triton

SPEC = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
PARAMETER = re.compile(r'parameters \{\s*key: "([^"]+)"\s*value: \{ string_value: "((?:[^"\\]|\\.)*)" \}\s*\}')


def pbtxt_parameters(config: str) -> dict[str, str]:
    """config.pbtxt's ``parameters`` entries (their string_value unescaped, as Triton reads them)."""
    return {key: json.loads(f'"{value}"') for key, value in PARAMETER.findall(config)}


@pytest.fixture
def repository(tmp_path, tiny, tiny_input) -> dict[str, Any]:
    protected, key = protect(tiny, example_input=tiny_input, seed=0)
    write_bundle(tmp_path / "cloud", protected, key, input_size=[3, 16, 16],
                 extra={"preprocess": SPEC, "categories": [f"c{i}" for i in range(10)]})
    key.save(tmp_path / "key.json")
    export_triton(tmp_path / "cloud", tmp_path / "repo", name="tiny", max_batch=4)
    images = []
    for index in range(3):
        images.append(tmp_path / f"img{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(images[-1])
    return {"root": tmp_path, "key": key, "model": tiny, "images": images}


def test_export_triton_writes_what_the_client_needs_into_the_config(repository):
    config = (repository["root"] / "repo" / "tiny" / "config.pbtxt").read_text()
    parameters = pbtxt_parameters(config)
    assert set(parameters) == {"fingerprint", "preprocess"}  # no class names, as minimal metadata
    assert parameters["fingerprint"] == repository["key"].model_fingerprint
    assert json.loads(parameters["preprocess"]) == SPEC
    assert config.count("parameters {") == 2


@pytest.fixture
def triton(repository) -> Iterator[str]:
    """A Triton stand-in serving repo/tiny: its URL."""
    folder = repository["root"] / "repo" / "tiny"
    model = load_model_dir(folder / "1", name="tiny")
    config = {"name": "tiny", "platform": "onnxruntime_onnx", "max_batch_size": 4,
              "parameters": {k: {"string_value": v}
                             for k, v in pbtxt_parameters((folder / "config.pbtxt").read_text()).items()}}
    metadata = {"name": "tiny", "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 20]}]}  # no parameters

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(200)
            for name, value in {"Content-Length": str(len(payload)), **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self.reply(json.dumps(config if self.path.endswith("/config") else metadata).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v2/repository/index":
                return self.reply(json.dumps([{"name": "tiny"}]).encode())
            length = self.headers.get(HEADER_LENGTH)
            parsed = parse_infer_request(body, None if length is None else int(length),
                                         {"name": "input", "shape": [-1, 3, 16, 16]}, 4)
            payload, headers = build_infer_response("tiny", {"logits": model.infer(parsed.inputs["input"])},
                                                    parsed.binary_outputs, None)
            self.reply(payload, headers)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_client_reads_fingerprint_and_preprocessing_from_tritons_config(repository, triton):
    results = classify(triton, repository["key"], repository["images"], k=1)
    x = torch.from_numpy(np.stack([preprocess(p, SPEC) for p in repository["images"]]))
    with torch.no_grad():
        expected = repository["model"](x).argmax(1).tolist()
    assert [r.topk[0][0] for r in results] == expected


def test_a_key_for_another_model_is_still_refused_through_the_config(repository, triton, tiny, tiny_input):
    _, other = protect(tiny, example_input=tiny_input, seed=1)
    with pytest.raises(FakeGradientError, match="another model"):
        classify(triton, other, repository["images"])


def test_without_parameters_anywhere_the_client_refuses(repository, triton, monkeypatch):
    from fakegradient.serving.client import InferenceClient

    monkeypatch.setattr(InferenceClient, "config", lambda self, name: {"max_batch_size": 4})
    with pytest.raises(FakeGradientError, match="publishes no fakegradient fingerprint"):
        classify(triton, Key.load(Path(repository["root"]) / "key.json"), repository["images"])
