"""The device client against a malicious cloud (a small stdlib server on 127.0.0.1 that answers whatever the test
tells it and stops by itself): no redirect to another origin (the token and the photos never go there), answers
bounded by what is expected and read as they arrive, preprocessing parameters bounded, deeply nested JSON and
control characters made one clean line, never a traceback."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from test_client_stream import KEY, SPEC, FakeServer, binary_answer, files, run  # noqa: F401 - files: a fixture

from fakegradient import FakeGradientError
from fakegradient.serving.client import (
    MAX_JSON_ANSWER,
    MAX_SIDE,
    InferenceClient,
    ServerModel,
    answer_limit,
    classify,
)
from fakegradient.terminal import escape_terminal

TOKEN = "0123456789abcdef0123456789abcdef"
LIFETIME_S = 120  # a server stops by itself after this, whatever the test does
Behaviour = Callable[[BaseHTTPRequestHandler], None]  # writes a whole answer (or not) to the handler


class Hostile:
    """Answers each request with ``behaviours[(method, path)]`` if given, else as :class:`FakeServer` (a well-behaved
    v2 server of one model ``m`` whose key is ``KEY``); records each request's (method, path, headers)."""

    def __init__(self, behaviours: dict[tuple[str, str], Behaviour] | None = None, **fake: Any):
        self.behaviours = behaviours or {}
        self.fake = FakeServer(**fake)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sent = 0  # bytes of the last streamed answer that the client took before it hung up


@contextmanager
def hostile(behaviours: dict[tuple[str, str], Behaviour] | None = None, **fake: Any) -> Iterator[tuple[Hostile, str]]:
    server = Hostile(behaviours, **fake)

    class Handler(BaseHTTPRequestHandler):
        timeout = 30

        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.requests.append((method, self.path, dict(self.headers)))
            behave = server.behaviours.get((method, self.path))
            if behave is not None:
                behave(self)
                return
            status, payload, headers = server.fake.answer(method, self.path, body, self.headers)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(payload)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self.answer("GET")

        def do_POST(self) -> None:
            self.answer("POST")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    stopper = threading.Timer(LIFETIME_S, httpd.shutdown)
    stopper.start()
    try:
        yield server, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        stopper.cancel()
        httpd.shutdown()
        httpd.server_close()


def send(status: int, payload: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    def behave(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(payload)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)
    return behave


def redirect(status: int, location: str) -> Behaviour:
    return send(status, b"", {"Location": location})


def stream(server: Hostile, total: int, head: bytes = b"", declare: bool = True) -> Behaviour:
    """An answer of ``total`` bytes (``head``, then zeros), its length declared or not (then it ends at close),
    written 64 KiB at a time until done or the client hangs up; ``server.sent`` counts what went out."""
    def behave(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        headers = {"Content-Length": str(total)} if declare else {"Connection": "close"}
        headers |= {"Inference-Header-Content-Length": str(len(head))} if head else {}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        server.sent = 0
        block = bytes(2**16)
        try:
            handler.wfile.write(head)
            while server.sent < total:
                handler.wfile.write(block)
                server.sent += len(block)
        except OSError:  # the client hung up: what we want
            handler.close_connection = True
    return behave


# --- redirects ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, status", [("GET", "/v2/models/m", 307), ("GET", "/v2/models/m", 302),
                                                  ("GET", "/v2/models/m", 301), ("POST", "/v2/models/m/infer", 307),
                                                  ("POST", "/v2/models/m/infer", 308),
                                                  ("POST", "/v2/models/m/infer", 303)])
def test_a_redirect_to_another_origin_is_refused_and_gets_neither_token_nor_photos(files, capsys, method, path,  # noqa: F811
                                                                                   status):
    files["token"] = files["key"].with_name("token")
    files["token"].write_text(TOKEN)
    with hostile() as (elsewhere, other_url), \
            hostile({(method, path): redirect(status, other_url + path)}) as (cloud, url):
        code, out, err = run(capsys, url, files, "red", extra=("--token-file", str(files["token"])))
    assert elsewhere.requests == []  # nothing was sent there: no token, no tensors
    assert (code, out) == (1, []) and len(err) == 1
    assert err[0].startswith(f"error: the server redirected {path} to another origin ({other_url}{path}): refused, "
                             "so that neither the token nor the photos go there; if that server is meant, pass its "
                             "address as --server"), err  # at the metadata, or as the first batch is sent: then
    # "(1 of 1 images not classified)": no further batch is tried
    assert all(headers.get("Authorization") == f"Bearer {TOKEN}" for _, _, headers in cloud.requests)


def test_a_redirect_within_the_origin_is_followed(files, capsys):  # noqa: F811
    with hostile({("GET", "/v2/models/m"): redirect(302, "/v2/models/m/")}) as (cloud, url):
        cloud.behaviours[("GET", "/v2/models/m/")] = lambda h: send(*cloud.fake.answer("GET", "/v2/models/m", b"",
                                                                                        {}))(h)
        code, out, err = run(capsys, url, files, "red")
    assert (code, err) == (0, []) and out[0].startswith("red.png: red")


def test_a_scheme_or_port_change_is_another_origin(files):  # noqa: F811
    with hostile() as (_, url):
        port = int(url.rsplit(":", 1)[1])
        for target in (url.replace("http:", "https:"), f"http://127.0.0.1:{port + 1}/v2/models/m",
                       f"http://localhost:{port}/v2/models/m"):
            with hostile({("GET", "/v2/models/m"): redirect(307, target)}) as (_, cloud_url), \
                    pytest.raises(FakeGradientError, match="redirected /v2/models/m to another origin"):
                classify(cloud_url, KEY, [files["red"]])


# --- answer sizes ------------------------------------------------------------------------------------------------

HUGE = 64 * 2**20  # far over every bound here; the red team's 1 GiB behaves the same, only slower


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
def test_a_huge_infer_answer_is_refused_after_its_bound_and_never_buffered(files, declare):  # noqa: F811
    head = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, HUGE // 4]}]}).encode()
    with hostile() as (cloud, url):
        cloud.behaviours[("POST", "/v2/models/m/infer")] = stream(cloud, HUGE, head, declare)
        tracemalloc.start()
        try:
            with pytest.raises(FakeGradientError) as refused:
                classify(url, KEY, [files["red"]])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    limit = answer_limit(1, KEY.n_outputs)  # 6 outputs: 64 KiB of head and JSON text, no more
    expected = (f"is {HUGE} bytes, over the {limit} expected: refused" if declare else
                f"is over the {limit} bytes expected: refused")
    assert f"the server's answer to /v2/models/m/infer {expected}" in str(refused.value)
    assert peak < 8 * 2**20, peak  # read as it arrives: never the 64 MiB
    assert cloud.sent < HUGE // 4, cloud.sent  # the client hung up early (what the sockets buffered at most)


def test_a_huge_metadata_answer_is_refused(files):  # noqa: F811
    with hostile() as (cloud, url):
        cloud.behaviours[("GET", "/v2/models/m")] = stream(cloud, HUGE, b"[", declare=False)
        with pytest.raises(FakeGradientError, match=f"answer to /v2/models/m is over the {MAX_JSON_ANSWER} bytes "
                                                    "expected: refused"):
            classify(url, KEY, [files["red"]])
    assert cloud.sent < HUGE // 4, cloud.sent


def test_a_huge_config_is_cut_off_and_taken_as_no_config(files):  # noqa: F811
    """An unusable config endpoint states no batch limit (as a server without one): the photos are classified."""
    with hostile() as (cloud, url):
        cloud.behaviours[("GET", "/v2/models/m/config")] = stream(cloud, HUGE, b"[", declare=False)
        assert [r.topk[0][1] for r in classify(url, KEY, [files["red"]])] == ["red"]
    assert cloud.sent < HUGE // 4, cloud.sent


def test_a_huge_error_answer_is_cut_to_one_short_line(files):  # noqa: F811
    def behave(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for _ in range(HUGE // 2**16):
                handler.wfile.write(b"x" * 2**16)
        except OSError:
            pass

    with hostile({("GET", "/v2/models/m"): behave}) as (_, url):
        tracemalloc.start()
        try:
            with pytest.raises(FakeGradientError, match=r"^server answered 500: x{300}$"):
                classify(url, KEY, [files["red"]])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * 2**20, peak


def test_the_answer_bound_follows_the_expected_outputs():
    """B rows of W outputs: binary (4 bytes a value) or JSON text (up to ~26) both fit; 1 GiB does not."""
    assert answer_limit(16, 2000) >= 16 * 2000 * 26 + 2**16
    assert answer_limit(16, 2000) < 2**30
    client = InferenceClient("http://127.0.0.1:1")
    model = ServerModel("m", "input", "logits", {})
    with hostile() as (cloud, url):
        client.url = url
        out = np.arange(12, dtype=np.float32).reshape(2, 6)
        json_values = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 6],
                                               "data": [-1.2345678e-38] * 12}]}).encode()
        cloud.behaviours[("POST", "/v2/models/m/infer")] = send(*binary_answer(out))
        np.testing.assert_array_equal(client.infer(model, np.zeros((2, 3, 8, 8), np.float32), 6), out)
        cloud.behaviours[("POST", "/v2/models/m/infer")] = send(200, json_values)
        assert client.infer(model, np.zeros((2, 3, 8, 8), np.float32), 6).shape == (2, 6)


# --- preprocessing parameters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"resize": 20000}, f"resize 20000 (at most {MAX_SIDE})"),
    ({"resize": 20000, "crop": 20000}, f"resize 20000 (at most {MAX_SIDE})"),
    ({"std": [1e-30, 1.0, 1.0]}, "std [1e-30, 1.0, 1.0] (within 0.001..1000)"),
    ({"mean": [1e30, 0.0, 0.0]}, "mean [1e+30, 0.0, 0.0] (|mean| at most 1000)"),
], ids=str)
def test_preprocessing_parameters_out_of_bounds_are_refused_before_any_photo_is_read(files, capsys, change,  # noqa: F811
                                                                                     message):
    with hostile(parameters={"fingerprint": KEY.model_fingerprint, "preprocess": SPEC | change}) as (cloud, url):
        code, out, err = run(capsys, url, files, "red")
    assert (code, out, cloud.fake.batches) == (1, [], [])
    assert err == [f"error: the server's preprocessing parameters are out of bounds: {message}"]


def test_the_largest_preset_is_within_bounds(files, capsys):  # noqa: F811
    """EfficientNet-B7's preset (resize 600, crop 600) is torchvision's largest: well inside."""
    spec = SPEC | {"resize": 600, "crop": 600}
    parameters = {"fingerprint": KEY.model_fingerprint, "preprocess": spec, "categories": ["red", "green", "blue"]}
    with hostile(parameters=parameters) as (_, url):
        code, out, err = run(capsys, url, files, "red")
    assert (code, err) == (0, []) and out[0].startswith("red.png: red")


# --- nested JSON -------------------------------------------------------------------------------------------------

NESTED = b"[" * 30_000 + b"]" * 30_000  # 60 KB: within every bound, far deeper than Python's recursion limit


@pytest.mark.parametrize("method, path, status", [("GET", "/v2/models/m", 200), ("GET", "/v2/models/m/config", 200),
                                                  ("POST", "/v2/repository/index", 200),
                                                  ("POST", "/v2/models/m/infer", 200), ("GET", "/v2/models/m", 400)])
def test_deeply_nested_json_is_one_line_not_a_recursion_error(files, capsys, method, path, status):  # noqa: F811
    with hostile({(method, path): send(status, NESTED)}) as (_, url):
        extra = () if "index" in path else ("--model-name", "m")
        code, out, err = run(capsys, url, files, "red", extra=extra)
    if path.endswith("/config"):  # an unusable config states no batch limit, as a missing one
        assert (code, err) == (0, []) and out[0].startswith("red.png: red")
        return
    assert code == 1 and out == [] and len(err) == 1 and err[0].startswith("error: "), err
    assert "Recursion" not in err[0] and ("nested too deeply" in err[0] or status == 400), err


def test_nested_json_inside_a_published_string_or_the_infer_head(files, capsys):  # noqa: F811
    nested = NESTED.decode()
    config = json.dumps({"max_batch_size": 2, "parameters": {"preprocess": {"string_value": nested}}}).encode()
    head = b'{"outputs": ' + NESTED + b"}"
    with hostile({("GET", "/v2/models/m/config"): send(200, config),
                  ("POST", "/v2/models/m/infer"): send(200, head, {"Inference-Header-Content-Length": str(len(head))})},
                 parameters={"fingerprint": KEY.model_fingerprint}) as (_, url):
        code, out, err = run(capsys, url, files, "red")
    assert (code, out) == (1, []) and len(err) == 1
    assert err[0].startswith("error: the server's preprocessing parameters are invalid: [[[["), err
    with hostile({("POST", "/v2/models/m/infer"): send(200, head, {"Inference-Header-Content-Length": str(len(head))})}
                 ) as (_, url):
        code, out, err = run(capsys, url, files, "red")
    assert code == 1 and out == [] and err[0].endswith("malformed inference answer: nested too deeply"), err


# --- control characters ------------------------------------------------------------------------------------------

FORGED = "\x1b[2K\r\x1b[1Agreen.png: green 100.0%   [cloud saw position 1, fake=True]\n\x9b31m\u202e"


def assert_clean(lines: list[str]) -> None:
    for line in lines:
        assert escape_terminal(line) == line, repr(line)  # no control character left


def test_published_class_names_are_printed_escaped(files, capsys):  # noqa: F811
    with hostile(parameters={"fingerprint": KEY.model_fingerprint, "preprocess": SPEC,
                             "categories": [FORGED, "green", "blue"]}) as (_, url):
        code, out, err = run(capsys, url, files, "red", "blue")
    assert (code, err) == (0, []) and len(out) == 2
    assert_clean(out)
    assert out[0].startswith(f"red.png: {escape_terminal(FORGED)} 100.0%"), out
    assert out[1].startswith("blue.png: blue")


@pytest.mark.parametrize("where", ["error body", "error reason", "status line", "datatype", "preprocess string",
                                   "redirect"])
def test_error_texts_from_the_server_are_printed_escaped(files, capsys, where):  # noqa: F811
    def raw(handler: BaseHTTPRequestHandler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.close_connection = True

    head = json.dumps({"outputs": [{"name": "logits", "datatype": FORGED, "shape": [1, 6]}]}).encode()
    behaviours = {
        "error body": {("GET", "/v2/models/m"): send(404, json.dumps({"error": FORGED}).encode())},
        "error reason": {("GET", "/v2/models/m"): lambda h: raw(h, b"HTTP/1.0 500 \x1b[31mBOOM\x1b[0m \xc2\x9b2J\r\n"
                                                                  b"Content-Length: 0\r\n\r\n")},
        "status line": {("GET", "/v2/models/m"): lambda h: raw(h, FORGED.encode() + b"\r\n\r\n")},
        "datatype": {("POST", "/v2/models/m/infer"): send(200, head + bytes(24),
                                                          {"Inference-Header-Content-Length": str(len(head))})},
        "preprocess string": {},
        "redirect": {("GET", "/v2/models/m"): redirect(307, "http://x.invalid/\x1b[2J")},
    }[where]
    parameters = {"fingerprint": KEY.model_fingerprint, "preprocess": FORGED if where == "preprocess string" else SPEC}
    with hostile(behaviours, parameters=parameters) as (_, url):
        code, out, err = run(capsys, url, files, "red")
    assert code == 1 and out == [] and len(err) == 1, err
    assert_clean(err)
    assert ("%1B[2J" if where == "redirect" else "\\x1b") in err[0], err  # urllib quotes a Location


def test_a_fingerprint_with_control_characters_is_refused_cleanly(files, capsys):  # noqa: F811
    with hostile(parameters={"fingerprint": FORGED, "preprocess": SPEC}) as (_, url):
        code, out, err = run(capsys, url, files, "red")
    assert (code, out, err) == (1, [], ["error: model 'm' publishes a malformed fingerprint"])


def test_a_server_that_never_finishes_its_answer_is_cut_off(files):  # noqa: F811
    """A body that trickles (one byte at a time, each within the socket timeout) is cut after ``answer_seconds``
    in all: the test's client allows 1 s, the server would take 10 minutes."""
    stop = threading.Event()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "6000")
        handler.end_headers()
        try:
            for _ in range(6000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                if stop.wait(0.1):
                    return
        except OSError:
            pass

    with hostile({("GET", "/v2/models/m"): trickle}) as (_, url):
        client = InferenceClient(url, timeout=5, answer_seconds=1)
        try:
            with pytest.raises(FakeGradientError, match="cannot reach .*: the answer took more than 1 s"):
                client.model("m")
        finally:
            stop.set()


def test_the_terminal_escape_keeps_text_and_escapes_controls():
    assert escape_terminal("Granny Smith, café, 日本, ✓ \\x1b") == "Granny Smith, café, 日本, ✓ \\x1b"
    assert escape_terminal("a\x1b[31mb\rc\nd\x7f\x9b\u202e\u200b\u2028") == \
        "a\\x1b[31mb\\rc\\nd\\x7f\\x9b\\u202e\\u200b\\u2028"
    assert escape_terminal(escape_terminal(FORGED)) == escape_terminal(FORGED)
