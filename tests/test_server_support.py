"""Helpers of the test_server_* files (this file holds no tests): tiny ONNX models written without torch,
and the real server (``build_server``: the protocol guard, the limits) in a thread on a loopback port."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fakegradient import defaults
from fakegradient.core.fingerprint import head_fingerprint
from fakegradient.integrity import seal
from fakegradient.serving.onnx_model import ServedModel, load_model_dir
from fakegradient.serving.server import Access, Batching, Limits, build_server

INPUT_SHAPE = [3, 2, 2]  # per image: 12 values
ROWS = 4  # 2N outputs


def head_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W (ROWS, 12), b (ROWS,)) float32 of a tiny head."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((ROWS, 12)).astype(np.float32), rng.standard_normal(ROWS).astype(np.float32))


def write_model(folder: Path, head: str = "gemm", fingerprint: str | None = "computed", seed: int = 0,
                sealed: bool = True) -> Path:
    """``folder/model.onnx``: (B, 3, 2, 2) -> (B, ROWS) through a head of kind ``head``: ``gemm`` (transB=1, as
    torch exports), ``gemm-t`` (transB=0: W stored transposed), ``conv`` (1x1 Conv on a (B, 12, 1, 1) view,
    then Flatten) or ``matmul`` (no Gemm/Conv: no head to find). ``fingerprint``: the metadata's value
    (``computed``: the true one; None: none). ``sealed``: with the whole-model digest, as exports write it."""
    weight, bias = head_weights(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *INPUT_SHAPE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", ROWS])
    shape4 = numpy_helper.from_array(np.array([-1, 12, 1, 1], np.int64), "shape4")
    b = numpy_helper.from_array(bias, "head.bias")
    if head == "gemm":
        inits = [numpy_helper.from_array(weight, "head.weight"), b]
        nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], transB=1)]
    elif head == "gemm-t":
        inits = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "head.weight"), b]
        nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"])]
    elif head == "conv":
        inits = [numpy_helper.from_array(weight.reshape(ROWS, 12, 1, 1), "head.weight"), b, shape4]
        nodes = [helper.make_node("Reshape", ["input", "shape4"], ["x4"]),
                 helper.make_node("Conv", ["x4", "head.weight", "head.bias"], ["conv"], kernel_shape=[1, 1]),
                 helper.make_node("Flatten", ["conv"], ["logits"])]
    elif head == "matmul":
        inits = [numpy_helper.from_array(np.ascontiguousarray(weight.T), "head.weight"), b]
        nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "head.weight"], ["mm"]),
                 helper.make_node("Add", ["mm", "head.bias"], ["logits"])]
    else:
        raise ValueError(head)
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if fingerprint is not None:
        value = head_fingerprint(weight, bias) if fingerprint == "computed" else fingerprint
        model.metadata_props.add(key="fakegradient.fingerprint", value=value)
    if sealed:
        seal(model, folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def tiny_request(x: np.ndarray, **fields: Any) -> bytes:
    """A JSON v2 request for a batch ``x`` of shape (B, 3, 2, 2), with extra top-level ``fields``."""
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}], **fields}).encode()


@contextmanager
def running_server(models: list[ServedModel], limits: Limits, access: Access = Access(),
                   batching: Batching = Batching(), http: str = defaults.HTTP) -> Iterator[tuple[str, int]]:
    """The real server (as ``serve`` builds it) in a thread on 127.0.0.1; yields (host, port)."""
    server = build_server(models, limits, access, batching, http)
    server.config.log_config = None
    with in_thread(server) as address:
        yield address


@contextmanager
def in_thread(server: Any) -> Iterator[tuple[str, int]]:
    """A ``uvicorn.Server`` run in a thread on a free 127.0.0.1 port, once started; yields (host, port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def running_transports(plane: Any) -> Iterator[tuple[str, str]]:
    """REST and gRPC on ``plane`` in one event loop in a thread (as ``serve --grpc-port`` runs them), on free
    loopback ports; yields (REST host:port, gRPC host:port)."""
    from fakegradient.serving.grpc_transport import serve_both  # needs grpcio

    rest = build_server([], plane=plane)
    rest.config.log_config = None
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    grpc_port: list[int] = []
    thread = threading.Thread(target=lambda: asyncio.run(serve_both(rest, [sock], plane, "127.0.0.1", 0,
                                                                    grpc_port.append)), daemon=True)
    thread.start()
    for _ in range(1000):
        if rest.started and grpc_port:
            break
        time.sleep(0.01)
    assert rest.started and grpc_port
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", f"127.0.0.1:{grpc_port[0]}"
    finally:
        rest.should_exit = True
        thread.join(timeout=15)
        sock.close()


def tiny_models(root: Path) -> list[ServedModel]:
    write_model(root / "tiny")
    return [load_model_dir(root / "tiny")]


def request(address: tuple[str, int], method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@contextmanager
def serve_subprocess(folders: list[Path], *options: str, python: str | Path = sys.executable
                     ) -> Iterator[tuple[subprocess.Popen, str]]:
    """``fakegradient serve FOLDERS OPTIONS`` on a free loopback port, once ready: (process, url). Another
    ``python`` (a venv with an installed wheel) runs without this process's PYTHONPATH."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = None if str(python) == sys.executable else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([str(python), "-m", "fakegradient.cli", "serve", *map(str, folders),
                               "--port", str(port), *options],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise AssertionError(f"the server exited: {server.stdout.read()}") from None
                time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)
