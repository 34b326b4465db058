"""Server exposure: minimal public metadata by default (no architecture, no class names), bearer-token
authentication on everything but health, and the device client that sends the token and keeps the class
names itself."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from test_server_support import request, running_server

from fakegradient import FakeGradientError, Key, protect
from fakegradient.cli import main
from fakegradient.modelfile import write_bundle
from fakegradient.serving.auth import read_token
from fakegradient.serving.client import classify, load_labels
from fakegradient.serving.onnx_model import load_model_dir
from fakegradient.serving.server import Access, Limits

TOKEN = "3f9c2a7e51d04b8c9e6f1a2b3c4d5e6f"
LABELS = [f"label-{i}" for i in range(10)]
SPEC = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
LIMITS = Limits(max_body_bytes=2**20, max_batch=8, header_timeout=30.0, body_timeout=30.0)
PROTECTED = [("GET", "/v2"), ("POST", "/v2/repository/index"), ("GET", "/v2/models/cloud"),
             ("GET", "/v2/models/cloud/versions/1"), ("GET", "/v2/models/cloud/ready"),
             ("GET", "/v2/models/cloud/config"), ("POST", "/v2/models/cloud/infer"),
             ("GET", "/v2/models/nope")]  # an unknown model is 401 too: strangers cannot probe names


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A protected TinyNet (class names and preprocessing in its metadata), its key, a token file, photos."""
    from conftest import TinyNet

    root = tmp_path_factory.mktemp("deployed")
    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    protected, key = protect(model, example_input=example, seed=0)
    write_bundle(root / "cloud", protected, key, input_size=[3, 16, 16],
                 extra={"preprocess": SPEC, "categories": LABELS})
    key.save(root / "key.json")
    (root / "token").write_text(TOKEN + "\n")
    rng = np.random.default_rng(0)
    images = []
    for index in range(3):
        images.append(root / f"photo{index}.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images[-1])
    return {"root": root, "model": model, "key": key, "images": images}


@pytest.fixture(scope="module")
def guarded(deployed):
    """The server with a token and the default (minimal) metadata."""
    with running_server([load_model_dir(deployed["root"] / "cloud")], LIMITS, Access(token=TOKEN)) as address:
        yield address


def error(body: bytes) -> str:
    payload = json.loads(body)
    assert list(payload) == ["error"], payload
    return payload["error"]


@pytest.mark.parametrize("method, path", PROTECTED)
def test_401_without_or_with_a_wrong_token(guarded, method, path):
    body = b"{}" if method == "POST" else None
    status, headers, answer = request(guarded, method, path, body)
    assert status == 401 and "bearer token is needed" in error(answer)
    assert {k.lower(): v for k, v in headers.items()}["www-authenticate"].startswith("Bearer")
    for wrong in (f"Bearer {TOKEN[:-1]}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN} extra", "Bearer "):
        status, _, answer = request(guarded, method, path, body, {"Authorization": wrong})
        assert status == 401 and error(answer) == "invalid bearer token", wrong


@pytest.mark.parametrize("method, path", PROTECTED[:6])
def test_200_with_the_token(guarded, method, path):
    body = b"{}" if method == "POST" else None
    assert request(guarded, method, path, body, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(guarded, method, path, body, {"Authorization": f"bearer  {TOKEN}"})[0] == 200


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_health_needs_no_token(guarded, path):
    assert request(guarded, "GET", path)[0] == 200


def test_inference_without_the_token_is_refused_before_its_body_is_read(guarded):
    with socket.create_connection(guarded) as sock:
        sock.sendall(b"POST /v2/models/cloud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n")
        sock.settimeout(30)
        assert sock.recv(64).startswith(b"HTTP/1.1 401 ")  # no byte of the 60 MB body was sent


def metadata(address, path: str, token: str | None = TOKEN) -> dict:
    status, _, body = request(address, "GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert status == 200, body
    return json.loads(body)


def test_minimal_metadata_hides_the_architecture_and_the_class_names(guarded, deployed):
    meta = metadata(guarded, "/v2/models/cloud")
    assert meta["parameters"] == {"fingerprint": deployed["key"].model_fingerprint, "preprocess": SPEC}
    text = json.dumps(meta) + json.dumps(metadata(guarded, "/v2/models/cloud/config"))
    assert "TinyNet" not in text and "label-" not in text
    config = metadata(guarded, "/v2/models/cloud/config")["parameters"]
    assert set(config) == {"fingerprint", "preprocess"} and json.loads(config["preprocess"]["string_value"]) == SPEC


def test_full_metadata_publishes_what_it_did_before(deployed):
    served = load_model_dir(deployed["root"] / "cloud")
    with running_server([served], LIMITS, Access(public_metadata="full")) as address:
        parameters = metadata(address, "/v2/models/cloud", token=None)["parameters"]
    assert parameters["arch"] == "TinyNet" and parameters["categories"] == LABELS
    assert parameters["n_outputs"] == "20" and parameters["preprocess"] == SPEC and "digest" in parameters
    with pytest.raises(ValueError, match="public_metadata"):
        Access(public_metadata="everything")


def local_top1(deployed) -> list[int]:
    """The unprotected TinyNet's top-1 on the same preprocessing (the device's own reference)."""
    from fakegradient.serving.client import preprocess

    x = torch.from_numpy(np.stack([preprocess(p, SPEC) for p in deployed["images"]]))
    with torch.no_grad():
        return deployed["model"](x).argmax(1).tolist()


def test_classify_sends_the_token_and_takes_the_class_names_from_the_device(guarded, deployed):
    url = f"http://{guarded[0]}:{guarded[1]}"
    key = Key.load(deployed["root"] / "key.json")
    with pytest.raises(FakeGradientError, match="server answered 401"):
        classify(url, key, deployed["images"])
    plain = classify(url, key, deployed["images"], token=TOKEN)  # minimal metadata: class numbers only
    assert [r.topk[0][0] for r in plain] == local_top1(deployed)
    assert all(r.topk[0][1] == f"class {r.topk[0][0]}" for r in plain)
    named = classify(url, key, deployed["images"], token=TOKEN, labels=LABELS)
    assert [r.topk[0][1] for r in named] == [LABELS[c] for c in local_top1(deployed)]
    with pytest.raises(FakeGradientError, match="3 labels for a key of 10 classes"):
        classify(url, key, deployed["images"], token=TOKEN, labels=LABELS[:3])


def test_classify_on_the_command_line_with_token_file_and_labels(guarded, deployed, capsys):
    url, root = f"http://{guarded[0]}:{guarded[1]}", deployed["root"]
    base = ["classify", "--server", url, "--key", str(root / "key.json"), "--top", "1"]
    images = [str(p) for p in deployed["images"]]
    assert main([*base, *images]) == 1
    assert capsys.readouterr().err == "error: server answered 401: a bearer token is needed " \
                                      "(Authorization: Bearer <token>)\n"
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    for labels in (root / "cloud", root / "cloud" / "model.onnx", root / "labels.txt"):
        assert main([*base, "--token-file", str(root / "token"), "--labels", str(labels), *images]) == 0
        lines = capsys.readouterr().out.splitlines()
        found = [line.split(": ", 1)[1].split("   [")[0].rsplit(" ", 1)[0] for line in lines]
        assert found == [LABELS[c] for c in local_top1(deployed)]


@pytest.mark.parametrize("content, message", [
    ("", "must hold one token"), ("short-token\n", "too short"), ("two tokens 0123456789abcdef", "one token"),
    ("x" * 5000, "larger than 4096 bytes"), ("ünïcode-0123456789abcdef", "one token")])
def test_bad_token_files_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(FakeGradientError, match=message):
        read_token(path)
    with pytest.raises(FakeGradientError, match="cannot read token file"):
        read_token(tmp_path / "missing")
    assert main(["serve", str(tmp_path), "--token-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_labels_files(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(LABELS))
    assert load_labels(tmp_path / "list.json") == LABELS
    for bad in ("{}", "[1, 2]", "[]", ""):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(FakeGradientError, match="no list of class names"):
            load_labels(tmp_path / "bad.json")
    with pytest.raises(FakeGradientError, match="cannot read labels"):
        load_labels(tmp_path / "missing.txt")
    # the same reader as `protect --labels`: BOM, surrounding blank lines and spaces ignored, no empty name
    (tmp_path / "names.txt").write_text("\ufeff\n cat \ndog\n\n", encoding="utf-8")
    assert load_labels(tmp_path / "names.txt") == ["cat", "dog"]
    (tmp_path / "gap.txt").write_text("cat\n\ndog\n")
    with pytest.raises(FakeGradientError, match="one non-empty class name per line"):
        load_labels(tmp_path / "gap.txt")


@pytest.mark.slow
def test_serve_options_reach_the_running_server(deployed):
    import urllib.error
    import urllib.request

    from test_server_support import serve_subprocess

    root = deployed["root"]
    for options in (["--token-file", str(root / "token")], ["--public-metadata", "full", "--dynamic-batching"]):
        with serve_subprocess([root / "cloud"], "--threads", "1", *options) as (_, url):
            with urllib.request.urlopen(url + "/v2/health/live", timeout=30) as answer:
                assert answer.status == 200
            plain = urllib.request.Request(url + "/v2/models/cloud")
            if "--token-file" in options:
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(plain, timeout=30)
                assert refused.value.code == 401
                plain.add_header("Authorization", f"Bearer {TOKEN}")
            with urllib.request.urlopen(plain, timeout=30) as answer:
                parameters = json.loads(answer.read())["parameters"]
            assert ("categories" in parameters) == ("full" in options)
            results = classify(url, deployed["key"], deployed["images"], token=TOKEN)
            assert [r.topk[0][0] for r in results] == local_top1(deployed)
