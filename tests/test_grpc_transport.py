"""The gRPC transport (serving/grpc_transport.py) beside REST on one data plane: tritonclient.grpc and
tritonclient.http, and ``fakegradient classify --server grpc://``, decrypt the same top-1 as local classification;
refusals get their status (never INTERNAL); the generated messages match the .proto."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_server_support import running_transports, serve_subprocess

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install 'fakegradient[grpc]')")

from fakegradient import load_secret, protect
from fakegradient.classify import predictions
from fakegradient.cli import main
from fakegradient.modelfile import write_bundle
from fakegradient.serving import open_inference_pb2 as pb
from fakegradient.serving.client import preprocess
from fakegradient.serving.dataplane import DataPlane
from fakegradient.serving.errors import (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ServerBusy,
    Unauthorized,
    UploadsBusy,
)
from fakegradient.serving.grpc_transport import status_of
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.settings import Access, Batching, Limits

SPEC = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SOURCE = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict[str, Any]:
    from conftest import TinyNet

    root = tmp_path_factory.mktemp("grpc")
    torch.manual_seed(0)
    tiny = TinyNet().eval()
    example = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    protected, key = protect(tiny, example_input=example, seed=0)
    write_bundle(root / "tiny", protected, key, input_size=[3, 16, 16],
                 extra={"preprocess": SPEC, "categories": [f"c{i}" for i in range(10)]})
    key.save(root / "key.json")
    (root / "token").write_text(TOKEN + "\n")
    images = []
    for index in range(5):
        images.append(root / f"img{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(images[-1])
    batch = np.stack([preprocess(p, SPEC) for p in images])
    with torch.no_grad():
        expected = tiny(torch.from_numpy(batch)).argmax(1).tolist()
    return {"root": root, "key": key, "images": images, "batch": batch, "expected": expected}


@pytest.fixture(scope="module")
def servers(bundle) -> Iterator[tuple[str, str]]:
    model = load_model_dir(bundle["root"] / "tiny")
    plane = DataPlane([model], Limits(max_batch=4), Access(token=TOKEN), Batching())
    with running_transports(plane) as addresses:
        yield addresses


AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = tuple(AUTH.items())


def test_tritonclient_grpc_and_http_decrypt_the_models_top1(bundle, servers):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http_address, grpc_address = servers
    key, batch = bundle["key"], bundle["batch"][:4]
    for module, address in ((grpcclient, grpc_address), (httpclient, http_address)):
        client = module.InferenceServerClient(address)
        assert client.is_server_live() and client.is_model_ready("tiny", headers=dict(AUTH))
        tensor = module.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        served = client.infer("tiny", [tensor], headers=dict(AUTH)).as_numpy("logits")
        assert served.shape == (4, key.n_outputs)
        assert [p.topk[0][0] for p in predictions(key, served, k=1)] == bundle["expected"][:4], module.__name__
    config = grpcclient.InferenceServerClient(grpc_address).get_model_config("tiny", headers=dict(AUTH)).config
    assert config.max_batch_size == 4 and set(config.parameters) == {"fingerprint", "preprocess"}  # minimal
    assert config.parameters["fingerprint"].string_value == key.model_fingerprint
    assert list(config.input[0].dims) == [3, 16, 16] and list(config.output[0].dims) == [key.n_outputs]


def _printed_top1(out: str) -> list[str]:
    return re.findall(r"^\S+: (.+?) \d+\.\d%", out, flags=re.MULTILINE)


def test_classify_over_grpc_and_rest_matches_local(bundle, servers, capsys):
    root, images = bundle["root"], [str(p) for p in bundle["images"]]
    http_address, grpc_address = servers
    assert main(["classify", "--model", str(root / "tiny"), "--key", str(root / "key.json"), "--top", "1",
                 *images]) == 0
    local = _printed_top1(capsys.readouterr().out)
    assert local == [f"c{i}" for i in bundle["expected"]]
    for url in (f"grpc://{grpc_address}", f"http://{http_address}"):  # 5 images, max batch 4: two calls
        assert main(["classify", "--server", url, "--token-file", str(root / "token"), "--labels",
                     str(root / "tiny"), "--top", "1", "--key", str(root / "key.json"), *images]) == 0
        assert _printed_top1(capsys.readouterr().out) == local, url
    # a wrong token: one line naming the status
    (root / "wrong").write_text("f" * 32)
    assert main(["classify", "--server", f"grpc://{grpc_address}", "--token-file", str(root / "wrong"), "--key",
                 str(root / "key.json"), *images]) == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err and "Traceback" not in err


def _infer(address: str, request: Any, metadata: Any = METADATA, raw: bytes | None = None) -> Any:
    """Call ModelInfer with ``request`` (or the ``raw`` bytes); returns the RpcError, or None on success."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 2**30)]) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=lambda r: r if raw is not None else r.SerializeToString(),
                                   response_deserializer=pb.ModelInferResponse.FromString)
        try:
            call(raw if raw is not None else request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc
    return None


def _request(shape: list[int], values: np.ndarray | None = None, **fields: Any) -> Any:
    request = pb.ModelInferRequest(model_name=fields.pop("model", "tiny"))
    request.inputs.add(name=fields.pop("name", "input"), datatype=fields.pop("datatype", "FP32"), shape=shape)
    data = np.zeros(int(np.prod(shape)), np.float32) if values is None else values
    request.raw_input_contents.append(np.ascontiguousarray(data, "<f4").tobytes())
    return request


@pytest.mark.parametrize(("case", "code", "message"), [
    ("no token", "UNAUTHENTICATED", "bearer token is needed"),
    ("wrong token", "UNAUTHENTICATED", "invalid bearer token"),
    ("bad shape", "INVALID_ARGUMENT", "does not match"),
    ("too few bytes", "INVALID_ARGUMENT", "does not hold"),
    ("int32", "INVALID_ARGUMENT", "send FP32"),
    ("nan", "INVALID_ARGUMENT", "NaN"),
    ("unknown model", "NOT_FOUND", "unknown model"),
    ("batch over the limit", "RESOURCE_EXHAUSTED", "exceeds the limit of 4"),
    ("oversize message", "RESOURCE_EXHAUSTED", "larger than max"),
    ("not a protobuf", "INVALID_ARGUMENT", "malformed ModelInferRequest"),
    ("unknown output", "INVALID_ARGUMENT", "unknown output"),
])
def test_refusals_get_their_status_never_internal(servers, case, code, message):
    _, address = servers
    metadata: Any = METADATA
    raw = None
    request = _request([1, 3, 16, 16])
    if case == "no token":
        metadata = ()
    elif case == "wrong token":
        metadata = (("authorization", "Bearer " + "0" * 32),)
    elif case == "bad shape":
        request = _request([1, 3, 16, 8])
    elif case == "too few bytes":
        request.raw_input_contents[0] = b"\0" * 12
    elif case == "int32":
        request = _request([1, 3, 16, 16], datatype="INT32")
    elif case == "nan":
        request = _request([1, 3, 16, 16], np.full(768, np.nan, np.float32))
    elif case == "unknown model":
        request = _request([1, 3, 16, 16], model="other")
    elif case == "batch over the limit":
        request = _request([5, 3, 16, 16])
    elif case == "oversize message":
        request = _request([1, 3, 16, 16])
        request.raw_input_contents[0] = b"\0" * (2 * 2**20)  # the limit: 4 images (12 KiB) + 64 KiB
    elif case == "not a protobuf":
        raw = b"\xff" * 64
    elif case == "unknown output":
        request.outputs.add(name="probabilities")
    error = _infer(address, request, metadata, raw)
    assert error is not None and error.code().name == code and message in error.details(), (
        error and (error.code(), error.details()))


def test_health_needs_no_token_and_the_rest_does(servers):
    _, address = servers
    with grpc.insecure_channel(address) as channel:
        def call(method: str, request: Any, response: type, metadata: Any = ()) -> Any:
            return channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                       request_serializer=type(request).SerializeToString,
                                       response_deserializer=response.FromString)(request, metadata=metadata,
                                                                                  timeout=10)
        assert call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
        assert call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
        with pytest.raises(grpc.RpcError) as refused:
            call("ModelMetadata", pb.ModelMetadataRequest(name="tiny"), pb.ModelMetadataResponse)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        meta = call("ModelMetadata", pb.ModelMetadataRequest(name="tiny"), pb.ModelMetadataResponse,
                    METADATA)
        assert meta.platform == "onnxruntime_onnx" and list(meta.inputs[0].shape) == [-1, 3, 16, 16]
        index = call("RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse, METADATA)
        assert [m.name for m in index.models] == ["tiny"]
        with pytest.raises(grpc.RpcError) as missing:
            call("ModelConfig", pb.ModelConfigRequest(name="nope"), pb.ModelConfigResponse, METADATA)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_full_public_metadata_reaches_the_config_too(bundle):
    model = load_model_dir(bundle["root"] / "tiny")
    plane = DataPlane([model], Limits(), Access(public_metadata="full"), Batching())
    with running_transports(plane) as (_, address):
        import tritonclient.grpc as grpcclient

        config = grpcclient.InferenceServerClient(address).get_model_config("tiny").config
        assert json.loads(config.parameters["categories"].string_value) == [f"c{i}" for i in range(10)]


def test_each_error_has_its_status():
    assert {cls.__name__: status_of(cls("x")).name for cls in (InvalidInput, ModelNotFound, PayloadTooLarge,
                                                                 ServerBusy, UploadsBusy, Unauthorized)} == {
        "InvalidInput": "INVALID_ARGUMENT", "ModelNotFound": "NOT_FOUND", "PayloadTooLarge": "RESOURCE_EXHAUSTED",
        "ServerBusy": "UNAVAILABLE", "UploadsBusy": "UNAVAILABLE", "Unauthorized": "UNAUTHENTICATED"}


def test_the_generated_messages_match_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (dev extra)")
    proto = "fakegradient/serving/open_inference.proto"
    assert protoc.main(["protoc", f"-I{SOURCE}", f"--python_out={tmp_path}", str(SOURCE / proto)]) == 0
    generated = (tmp_path / "fakegradient/serving/open_inference_pb2.py").read_text()
    serialized = re.search(r"AddSerializedFile\((b'.*?')\)", generated, flags=re.DOTALL).group(1)
    assert ast.literal_eval(serialized) == pb.DESCRIPTOR.serialized_pb


@pytest.mark.slow
def test_serve_grpc_port_from_the_command_line(bundle, capsys):
    root = bundle["root"]
    with serve_subprocess([root / "tiny"], "--grpc-port", "0", "--token-file", str(root / "token")) as (server, _):
        line = ""
        deadline = time.monotonic() + 60
        while "gRPC on" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
        port = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", line)
        assert port, line
        assert main(["classify", "--server", f"grpc://127.0.0.1:{port.group(1)}", "--token-file",
                     str(root / "token"), "--key", str(root / "key.json"), "--top", "1",
                     *map(str, bundle["images"])]) == 0
        assert len(_printed_top1(capsys.readouterr().out)) == len(bundle["images"])


@pytest.mark.slow
def test_a_grpc_port_in_use_is_a_one_line_error(bundle, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "fakegradient.cli", "serve", str(bundle["root"] / "tiny"),
                                 "--port", "0", "--grpc-port", str(taken.getsockname()[1])],
                                check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: cannot listen for gRPC"), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_20_photos_through_tritonclient_grpc_and_http_match_the_original(tmp_path, photos_top1, capsys):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from fakegradient.data import foolbox_imagenet
    from fakegradient.key import Key

    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--out", str(tmp_path / "mnv2"),
                 "--key", str(tmp_path / "mnv2.key")]) == 0
    key = Key.load(tmp_path / "mnv2.key")
    model = load_model_dir(tmp_path / "mnv2")
    paths = [s.path for s in foolbox_imagenet()]
    batch = np.stack([preprocess(p, model.parameters()["preprocess"]) for p in paths])
    plane = DataPlane([model], Limits(max_batch=8), Access(), Batching())
    with running_transports(plane) as (http_address, grpc_address):
        for module, address in ((grpcclient, grpc_address), (httpclient, http_address)):
            client = module.InferenceServerClient(address)
            top1 = []
            for start in range(0, len(batch), 8):
                tensor = module.InferInput("input", list(batch[start:start + 8].shape), "FP32")
                tensor.set_data_from_numpy(batch[start:start + 8])
                served = client.infer("mnv2", [tensor]).as_numpy("logits")
                top1 += [p.topk[0][0] for p in predictions(key, served, k=1)]
            assert top1 == photos_top1, module.__name__
        assert main(["classify", "--server", f"grpc://{grpc_address}", "--key", str(tmp_path / "mnv2.key"),
                     "--top", "1", *map(str, paths)]) == 0
    # minimal metadata publishes no names: the ones printed came with the key
    assert _printed_top1(capsys.readouterr().out) == [load_secret(tmp_path / "mnv2.key").label(i) for i in photos_top1]
    assert "categories" in model.parameters() and "categories" not in Access().public(model.parameters())
