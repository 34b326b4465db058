"""The server against hostile or broken clients: malformed requests (a fuzz campaign), JSON parsed off the
event loop, slow and idle connections, too many connections, too many requests at once; and what it no
longer serves (OpenAPI, versions other than 1). Loopback only; loops bounded in count and time."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_server_support import INPUT_SHAPE, request, running_server, tiny_models, tiny_request

import fakegradient.serving.dataplane as dataplane_module
import fakegradient.serving.server as server_module
from fakegradient import defaults
from fakegradient.errors import FakeGradientError, InvalidArgument
from fakegradient.serving.onnx_model import ServedModel
from fakegradient.serving.server import Access, Batching, Limits

LIMITS = Limits(max_body_bytes=2**20, max_batch=4, max_inflight=2, max_runs=2, max_connections=32,
                header_timeout=1.0, body_timeout=1.0, keep_alive=1.0)
INFER = "/v2/models/tiny/infer"
GOOD = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, *INPUT_SHAPE)


class GateSession:
    """An ONNX Runtime stand-in whose runs wait until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.entered.release()
        self.gate.wait(timeout=30)
        return [np.zeros((len(feeds["input"]), 4), np.float32)]


def gate_model(gate: GateSession) -> ServedModel:
    return ServedModel("gate", Path("gate.onnx"), gate, "input", [-1, *INPUT_SHAPE], "logits", [-1, 4])


@pytest.fixture(scope="module", params=list(defaults.HTTP_PARSERS))
def guarded(tmp_path_factory, request):
    """The real server (tiny ONNX model + a gated stub) under tight limits, on each HTTP implementation:
    (address, gate session)."""
    gate = GateSession()
    models = tiny_models(tmp_path_factory.mktemp("models")) + [gate_model(gate)]
    with running_server(models, LIMITS, batching=Batching(enabled=True, max_rows=2),  # 2 rows: alone
                        http=request.param) as address:
        yield address, gate


def error_of(status: int, headers: dict[str, str], body: bytes) -> str:
    """The message of a JSON error answer (asserting that it is one)."""
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    payload = json.loads(body)
    assert list(payload) == ["error"] and isinstance(payload["error"], str), payload
    return payload["error"]


# --- item 9: no OpenAPI, only version 1 --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_no_openapi_or_docs(guarded, path):
    status, headers, body = request(guarded[0], "GET", path)
    assert status == 404 and error_of(status, headers, body) == f"Not Found: GET {path}"


@pytest.mark.parametrize("method, path", [("POST", "/v2/models/tiny/versions/{}/infer"),
                                          ("GET", "/v2/models/tiny/versions/{}"),
                                          ("GET", "/v2/models/tiny/versions/{}/ready")])
def test_only_version_1_exists(guarded, method, path):
    body = tiny_request(GOOD) if method == "POST" else None
    assert request(guarded[0], method, path.format(1), body)[0] == 200
    for version in ("2", "0", "01", "latest"):
        status, headers, answer = request(guarded[0], method, path.format(version), body)
        assert status == 404
        assert error_of(status, headers, answer) == f"model 'tiny' has no version '{version}'; its only version is '1'"


# --- item 6: every malformed request is a 4xx JSON error ----------------------------------------------


ISSUE_BODIES = {
    "datatype a list": tiny_request(GOOD).replace(b'"datatype": "FP32"', b'"datatype": ["FP32"]'),
    "datatype a dict": tiny_request(GOOD).replace(b'"datatype": "FP32"', b'"datatype": {"FP32": 1}'),
    "input parameters a list": tiny_request(GOOD).replace(b'"name": "input"', b'"name": "input", "parameters": [1]'),
    "request parameters a string": tiny_request(GOOD, parameters="binary"),
    "output parameters a number": tiny_request(GOOD, outputs=[{"name": "logits", "parameters": 5}]),
    "outputs not a list": tiny_request(GOOD, outputs={"name": "logits"}),
    "outputs not objects": tiny_request(GOOD, outputs=["logits"]),
    "deep nesting": b'{"inputs": [{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
    "integer of 5000 digits": b'{"inputs": [{"data": [' + b"7" * 5000 + b"]}]}",
    "10**400 in data": tiny_request(GOOD).replace(b'"data": [', b'"data": [1' + b"0" * 400 + b", "),
    "1e400 in data": tiny_request(GOOD).replace(b'"data": [', b'"data": [1e400, '),
    "id an object": tiny_request(GOOD, id={"a": [[[]]]}),
    "flag a string": tiny_request(GOOD, parameters={"binary_data_output": "true"}),
}


@pytest.mark.parametrize("name", list(ISSUE_BODIES))
def test_malformed_requests_of_the_issue_get_a_json_4xx(guarded, name):
    status, headers, body = request(guarded[0], "POST", INFER, ISSUE_BODIES[name])
    assert 400 <= status < 500, (name, status, body[:300])
    assert error_of(status, headers, body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
NASTY = [b"7" * 5000, b"[" * 5000 + b"]" * 5000, b"1e400", b"-1e400", b"NaN", b"-Infinity", b"1" + b"0" * 400,
         b'"' + b"a" * 50_000 + b'"', b'"\\ud800"', b"-0", b"1e-400", b"{}", b"[]", b"null", b"[[[[[1]]]]]"]
FIELDS = [("id",), ("inputs",), ("inputs", 0), ("inputs", 0, "name"), ("inputs", 0, "shape"),
          ("inputs", 0, "shape", 0), ("inputs", 0, "datatype"), ("inputs", 0, "data"), ("inputs", 0, "data", 0),
          ("inputs", 0, "parameters"), ("inputs", 0, "parameters", "binary_data_size"), ("parameters",),
          ("parameters", "binary_data_output"), ("outputs",), ("outputs", 0), ("outputs", 0, "name"),
          ("outputs", 0, "parameters"), ("outputs", 0, "parameters", "binary_data")]
PATHS = [INFER, "/v2/models/tiny/versions/1/infer", "/v2/models/tiny/versions/2/infer", "/v2/models/nope/infer"]


def replace(document: dict, path: tuple, value) -> None:
    """Set ``document[path]`` when every container on the way is still there."""
    with contextlib.suppress(KeyError, IndexError, TypeError):
        node = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value


@st.composite
def fuzz_requests(draw) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers): a valid v2 request (JSON or binary) with fields replaced by any JSON or by
    nasty raw fragments, then some bytes flipped, inserted, deleted or cut, and the header length bent."""
    x = draw(hnp.arrays(np.float32, st.tuples(st.integers(1, LIMITS.max_batch + 1), *map(st.just, INPUT_SHAPE)),
                        elements=st.floats(width=32)))
    entry: dict = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    tail = b""
    if binary := draw(st.booleans()):
        del entry["data"]
        entry["parameters"], tail = {"binary_data_size": x.nbytes}, x.tobytes()
    document = {"id": "r", "inputs": [entry], "parameters": {"binary_data_output": draw(st.booleans())},
                "outputs": [{"name": "logits", "parameters": {"binary_data": draw(st.booleans())}}]}
    raw = {}
    for i, path in enumerate(draw(st.lists(st.sampled_from(FIELDS), max_size=3))):
        if draw(st.booleans()):
            replace(document, path, draw(json_values))
        else:
            replace(document, path, f"@@{i}@@")
            raw[f'"@@{i}@@"'.encode()] = draw(st.sampled_from(NASTY))
    head = json.dumps(document).encode()
    for placeholder, fragment in raw.items():
        head = head.replace(placeholder, fragment)
    body = head + tail
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if kind == "flip" and at < len(body):
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
        elif kind == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + draw(st.integers(1, 16)):]
        elif kind == "cut":
            body = body[:at]
    headers = {"Content-Type": "application/json"}
    length = draw(st.sampled_from(["right", "none", "int", "text", "giant"]) if binary
                  else st.sampled_from(["none", "int", "giant"]))
    if length == "right":
        headers["Inference-Header-Content-Length"] = str(len(head))
    elif length == "int":
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-3, len(body) + 3)))
    elif length == "giant":  # int() refuses over 4300 digits: it was a 500
        headers["Inference-Header-Content-Length"] = str(len(head)) * draw(st.integers(1, 2000))
    elif length == "text":
        headers["Inference-Header-Content-Length"] = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                                  max_size=6))
    return draw(st.sampled_from(PATHS)), body, headers


def good_answers(address) -> tuple[bytes, bytes]:
    """The answers to one good JSON request and one good binary request."""
    answers = []
    for fields in ({}, {"parameters": {"binary_data_output": True}}):
        status, _, body = request(address, "POST", INFER, tiny_request(GOOD, **fields))
        assert status == 200
        answers.append(body)
    return answers[0], answers[1]


@pytest.mark.slow
def test_fuzz_never_a_5xx_and_the_same_answer_after(guarded):
    """A few thousand mutated requests: each answer is 2xx, or 4xx with a JSON error; then a good request
    gets the very same bytes as before (same server, same request: same computation)."""
    address = guarded[0]
    before = good_answers(address)
    stats: Counter = Counter()
    stop_at = time.monotonic() + 150

    @settings(max_examples=2500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzz_requests())
    def one(case: tuple[str, bytes, dict[str, str]]) -> None:
        if time.monotonic() > stop_at:
            return
        path, body, headers = case
        status, answer_headers, answer = request(address, "POST", path, body, headers)
        stats["sent"] += 1
        stats[f"{status // 100}xx"] += 1
        assert status < 500, (status, answer[:300], body[:300], headers)
        if status >= 400:
            assert error_of(status, answer_headers, answer)

    one()
    print(f"fuzz: {dict(stats)}")
    assert stats["sent"] >= 500 and stats["5xx"] == 0 and stats["2xx"] > 0 and stats["4xx"] > 0
    assert good_answers(address) == before


@st.composite
def raw_requests(draw) -> tuple[str, bytes]:
    """(shape, raw bytes sent at once) of the shapes that passed the parsers: a giant number in a length
    header, Content-Length with Transfer-Encoding (a request pipelined behind), a whole head over the bound,
    a head of too many lines; with a good JSON body."""
    shape = draw(st.sampled_from(["giant number", "CL+TE", "head over the bound", "too many lines"]))
    body = tiny_request(GOOD)
    lines = [f"POST {draw(st.sampled_from(PATHS))} HTTP/1.1".encode(), b"Host: x"]
    if shape == "giant number":
        digits = draw(st.one_of(st.integers(1, 25), st.integers(4290, 4310), st.integers(5000, 20_000)))
        number = draw(st.sampled_from(b"0123456789")).to_bytes(1, "big") * digits
        name = draw(st.sampled_from([b"Inference-Header-Content-Length", b"Content-Length"]))
        lines.append(name + b": " + number)
        if name != b"Content-Length":
            lines.append(b"Content-Length: %d" % len(body))
    elif shape == "CL+TE":
        pair = [draw(st.sampled_from([b"Content-Length", b"content-length"])) + b": %d" % draw(st.integers(0, 99)),
                draw(st.sampled_from([b"Transfer-Encoding: chunked", b"transfer-encoding: chunked",
                                      b"Transfer-Encoding: gzip, chunked"]))]
        lines += draw(st.permutations(pair))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    elif shape == "head over the bound":
        size = draw(st.integers(LIMITS.max_head_bytes + 1, 64 * 2**10))
        width = draw(st.integers(8, 4000))
        lines += [b"X-Pad-%d: %s" % (i, b"a" * width) for i in range(size // (width + 12) + 1)]
        lines.append(b"Content-Length: %d" % len(body))
    else:
        lines += [b"a%d:" % i for i in range(draw(st.integers(LIMITS.max_header_fields, 3000)))]
        lines.append(b"Content-Length: %d" % len(body))
    return shape, b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.slow
def test_fuzz_raw_heads_never_a_5xx_nor_passed(guarded):
    """The request shapes of round 3, sent whole at once: each is answered 4xx with a JSON error (or, for a
    number that is a length, 2xx / 4xx), once, and what is over a bound or ambiguous is never served."""
    address = guarded[0]
    stats: Counter = Counter()
    stop_at = time.monotonic() + 90

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(raw_requests())
    def one(case: tuple[str, bytes]) -> None:
        if time.monotonic() > stop_at:
            return
        shape, data = case
        answer, _ = raw_exchange(address, data, wait=5)
        head, _, payload = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
        stats[f"{shape}: {status}"] += 1
        assert 200 <= status < 500, (shape, answer[:300], data[:300])
        if shape != "giant number":
            assert status in (400, 431) and answer.count(b"HTTP/1.1 ") == 1, (shape, answer[:300])
        if status >= 400:
            assert list(json.loads(payload[:payload.index(b"}") + 1])) == ["error"], answer[:300]

    one()
    print(f"raw fuzz: {dict(sorted(stats.items()))}")
    assert sum(stats.values()) >= 100 and not any(k.endswith(": 0") for k in stats)
    assert request(address, "GET", "/v2/health/live")[0] == 200


# --- item 7: JSON is parsed off the event loop ----------------------------------------------------------


def test_health_answers_while_a_request_is_being_parsed(guarded, monkeypatch):
    """A parse that does not end until the test says so: the health check is answered meanwhile (it was
    not while parsing ran on the event loop)."""
    entered, release = threading.Event(), threading.Event()
    parse = dataplane_module.parse_infer_request

    def slow_parse(*args, **kwargs):
        entered.set()
        release.wait(timeout=20)
        return parse(*args, **kwargs)

    monkeypatch.setattr(dataplane_module, "parse_infer_request", slow_parse)
    result: list = []
    sender = threading.Thread(target=lambda: result.append(request(guarded[0], "POST", INFER, tiny_request(GOOD))))
    sender.start()
    try:
        assert entered.wait(timeout=10)
        status, _, body = request(guarded[0], "GET", "/v2/health/live", timeout=5)
        assert (status, json.loads(body)) == (200, {"live": True})
    finally:
        release.set()
        sender.join(timeout=30)
    assert result and result[0][0] == 200


# --- item 8: bounded requests in flight, timeouts, connection cap ------------------------------------


def test_requests_beyond_max_inflight_get_503_with_retry_after(guarded):
    address, gate = guarded
    gate.gate.clear()
    results: list = []
    senders = [threading.Thread(target=lambda: results.append(
        request(address, "POST", "/v2/models/gate/infer", tiny_request(GOOD)))) for _ in range(LIMITS.max_inflight)]
    for sender in senders:
        sender.start()
    try:
        for _ in senders:
            assert gate.entered.acquire(timeout=10)  # both slots taken, by runs that wait
        status, headers, body = request(address, "POST", INFER, tiny_request(GOOD))
        assert status == 503 and headers["retry-after"] == "1"
        assert error_of(status, headers, body) == "2 requests in progress (the limit); retry later"
        assert request(address, "GET", "/v2/health/ready")[0] == 200  # health is no inference
    finally:
        gate.gate.set()
        for sender in senders:
            sender.join(timeout=30)
    assert [r[0] for r in results] == [200, 200]
    assert request(address, "POST", INFER, tiny_request(GOOD))[0] == 200  # the slots are free again


@pytest.fixture
def gated(tmp_path):
    """A server with one gated model and one ONNX Runtime run at a time."""
    gate = GateSession()
    models = tiny_models(tmp_path) + [
        ServedModel("gate", Path("gate.onnx"), gate, "input", [-1, *INPUT_SHAPE], "logits", [-1, 4])]
    limits = Limits(max_inflight=2, max_runs=1)
    with running_server(models, limits) as address:
        yield address, gate
        gate.gate.set()


def test_onnx_runtime_runs_at_once_are_bounded(gated):
    address, gate = gated
    results: list = []
    senders = [threading.Thread(target=lambda: results.append(
        request(address, "POST", "/v2/models/gate/infer", tiny_request(GOOD)))) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        assert gate.entered.acquire(timeout=10)  # one run started...
        assert not gate.entered.acquire(timeout=1)  # ...the other waits for it (max_runs=1)
    finally:
        gate.gate.set()
        for sender in senders:
            sender.join(timeout=30)
    assert [r[0] for r in results] == [200, 200]


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closes ``sock`` within ``wait`` seconds (it sends nothing else)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def read_until_closed(sock: socket.socket, wait: float) -> tuple[bytes, bool]:
    """(what the server sent, whether it closed ``sock``) within ``wait`` seconds; a reset counts as closed."""
    sock.settimeout(wait)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return answer, False
    return answer, True


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with socket.create_connection(guarded[0]) as idle:
        start = time.monotonic()
        assert closed_by_server(idle, wait=10)
        assert time.monotonic() - start >= LIMITS.header_timeout * 0.9


def test_headers_sent_byte_by_byte_are_cut_off(guarded):
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with socket.create_connection(guarded[0]) as slow:
        start, cut = time.monotonic(), False
        for byte in head:  # ~5 bytes a second: the whole head would take 40 s
            try:
                slow.sendall(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
            if closed_by_server(slow, wait=0.2):
                cut = True
                break
            if time.monotonic() - start > 15:
                break
        assert cut and time.monotonic() - start < 10


def test_a_head_over_the_limit_is_refused_and_others_are_served(guarded):
    """An unfinished head larger than ``max_head_bytes``, sent at once, is answered 400 and closed before the
    header timeout would close it without an answer (h11 bounds it itself; for httptools the server counts)."""
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(2 * LIMITS.max_head_bytes // 1000))
    with socket.create_connection(guarded[0]) as big:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            big.sendall(head)  # the server may close before it has all
        answer, _ = read_until_closed(big, wait=5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert request(guarded[0], "GET", "/v2/health/live", timeout=5)[0] == 200


def test_a_body_after_an_early_answer_is_not_taken_for_a_head(guarded):
    """A body declared over 4x the limit is answered 413 before it arrives; the rest of it, still being sent,
    must not be counted against the head bound (it was: a reset connection instead of the 413)."""
    status, _, body = request(guarded[0], "POST", INFER, b"0" * (5 * LIMITS.max_body_bytes), timeout=10)
    assert status == 413, body[:200]


def test_httptools_bounds_a_head_pipelined_behind_a_request_in_progress(tmp_path):
    """httptools reads on while a request runs (h11 stops reading): a next head over the bound gets the
    connection closed while the first request is still in progress (it was held without limit)."""
    gate = GateSession()
    gate.gate.clear()
    body = tiny_request(GOOD)
    with running_server([gate_model(gate)], LIMITS, http="httptools") as address, \
            socket.create_connection(address) as sock:
        try:
            sock.sendall(b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert gate.entered.acquire(timeout=10)  # in progress, and stays so until the gate opens
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Pad: " + b"a" * (4 * LIMITS.max_head_bytes))
            _, closed = read_until_closed(sock, wait=5)
            assert closed
        finally:
            gate.gate.set()


def test_the_http_parser_is_checked_and_the_event_loop_is_asyncio(tmp_path, monkeypatch):
    """Unknown parsers are refused, a missing httptools is named, and uvicorn never picks uvloop on its own
    (it does when installed; under benchmarks/serving.py --hostile it starved the health checks)."""
    models = tiny_models(tmp_path)
    with pytest.raises(InvalidArgument, match="--http must be one of h11, httptools"):
        server_module.build_server(models, http="llhttp")
    assert {server_module.build_server(models, http=h).config.loop for h in defaults.HTTP_PARSERS} == {"asyncio"}
    monkeypatch.setitem(sys.modules, "httptools", None)
    with pytest.raises(FakeGradientError, match="needs the httptools package"):
        server_module.build_server(models, http="httptools")


def test_a_body_that_stops_arriving_gets_408_and_others_are_served(guarded):
    address = guarded[0]
    with socket.create_connection(address) as slow:
        slow.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"inputs": [')
        assert request(address, "GET", "/v2/health/live", timeout=5)[0] == 200  # others are served meanwhile
        assert request(address, "POST", INFER, tiny_request(GOOD), timeout=5)[0] == 200
        slow.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(body) == {"error": "the request body took over 1 s to arrive"}


@pytest.mark.parametrize("http", list(defaults.HTTP_PARSERS))
def test_many_idle_connections_cannot_lock_out_a_client(tmp_path, http):
    """Over the connection cap, the connections idle the longest are closed (long before the header
    timeout): a flood of idle connections does not exhaust the server's file descriptors, and a new
    client still gets served."""
    with running_server(tiny_models(tmp_path), Limits(max_connections=32, header_timeout=600),
                        http=http) as address:
        flood = [socket.create_connection(address) for _ in range(32 + 100)]
        try:
            assert request(address, "POST", INFER, tiny_request(GOOD), timeout=10)[0] == 200
            closed: set[int] = set()
            deadline = time.monotonic() + 10
            while len(closed) < 100 and time.monotonic() < deadline:  # every connection over the cap
                closed |= {i for i, sock in enumerate(flood) if i not in closed and closed_by_server(sock, 0.001)}
            assert len(closed) >= 100 and 0 in closed and len(flood) - 1 not in closed  # the oldest go first
        finally:
            for sock in flood:
                sock.close()
        assert request(address, "GET", "/v2/health/live")[0] == 200


# --- keep-alive latency, parser edge cases, protocol details -----------------------------------------------


def http_connection(address) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(*address, timeout=10)
    conn.connect()
    return conn


def timed_get(conn: http.client.HTTPConnection) -> float:
    start = time.perf_counter()
    conn.request("GET", "/v2/health/live")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b'{"live":true}'
    return time.perf_counter() - start


@pytest.mark.parametrize("parser", list(defaults.HTTP_PARSERS))
def test_requests_on_a_kept_alive_connection_are_not_held_back(tmp_path, parser):
    """TCP_NODELAY on every connection: a request on a kept-alive connection answers about as fast as one on a
    new connection (it took 44 ms, 20x more: the answer's body waited behind Nagle's algorithm for the
    client's delayed ACK). Compared within this run, medians of 7."""
    with running_server(tiny_models(tmp_path), LIMITS, http=parser) as address:
        fresh = []
        for _ in range(7):
            conn = http_connection(address)
            fresh.append(timed_get(conn))  # a connection's first request: never held back
            conn.close()
        conn = http_connection(address)
        timed_get(conn)
        kept = [timed_get(conn) for _ in range(7)]
        conn.close()
    assert statistics.median(kept) < 5 * statistics.median(fresh), (kept, fresh)


def raw_exchange(address, data: bytes, wait: float = 5) -> tuple[bytes, bool]:
    """(all the server answered, whether it closed) to ``data`` sent at once on a new connection."""
    with socket.create_connection(address) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(data)
        return read_until_closed(sock, wait)


def test_a_giant_header_length_is_a_short_400(guarded):
    status, headers, body = request(guarded[0], "POST", INFER, tiny_request(GOOD),
                                    {"Inference-Header-Content-Length": "9" * 5000})
    assert status == 400 and len(body) < 200 and "99999" not in body.decode(), body[:300]  # was 500
    assert error_of(status, headers, body) == "Inference-Header-Content-Length of 5000 digits is no length (at most 20)"


def test_content_length_with_transfer_encoding_is_refused_and_closed(guarded):
    """RFC 9112 section 6.1: such a request is answered 400 and the connection closed; the request pipelined
    behind it is not answered (h11 answered both and kept the connection)."""
    answer, closed = raw_exchange(guarded[0], b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5"
                                  b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/health/live HTTP/1.1\r\n"
                                  b"Host: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1 and closed, answer


@pytest.mark.parametrize("size", [17, 30, 64])
def test_a_whole_head_over_the_bound_at_once_is_refused(guarded, size):
    """The head bound holds when the whole head arrives in one piece (it held only for heads in pieces)."""
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(size)) + b"\r\n"
    answer, closed = raw_exchange(guarded[0], head)
    assert answer.split(b" ")[1] in (b"400", b"431") and closed, answer[:200]


def test_a_head_of_too_many_lines_is_refused(guarded):
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(b"a%d:\r\n" % i for i in range(1000)) + b"\r\n"
    assert len(head) < LIMITS.max_head_bytes
    answer, closed = raw_exchange(guarded[0], head)
    assert answer.startswith(b"HTTP/1.1 431 ") and closed, answer[:200]
    assert b'{"error":"over 100 header lines"}' in answer


@pytest.mark.parametrize("parser", list(defaults.HTTP_PARSERS))
def test_a_chunked_upload_gone_bad_after_its_401_logs_no_traceback(tmp_path, parser, caplog):
    """An unauthenticated chunked upload is answered 401 at once; a bad chunk after it (or in the same packet)
    closes the connection, with no second answer and no traceback in the log (h11 raised, each time)."""
    caplog.set_level(logging.WARNING)
    token = "0123456789abcdef0123456789abcdef"
    head = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    with running_server(tiny_models(tmp_path), LIMITS, Access(token=token), http=parser) as address:
        with socket.create_connection(address) as sock:
            sock.sendall(head)
            sock.settimeout(10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 401 ")
            sock.sendall(b"zz\r\n")  # not a chunk size
            rest, closed = read_until_closed(sock, 5)
        assert closed and b"HTTP/1.1" not in rest, rest  # httptools answered a second time
        answer, closed = raw_exchange(address, head.replace(b"5\r\nhello", b"zz"))
        assert answer.split(b" ")[1] in (b"400", b"401") and answer.count(b"HTTP/1.1") == 1 and closed
        assert request(address, "GET", "/v2/health/live")[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_an_output_the_model_does_not_have_is_a_400(guarded):
    body = tiny_request(GOOD, outputs=[{"name": "probabilities"}])
    status, headers, answer = request(guarded[0], "POST", INFER, body)
    assert status == 400 and error_of(status, headers, answer).startswith("unknown output 'probabilities'")
    assert request(guarded[0], "POST", INFER, tiny_request(GOOD, outputs=[{"name": "logits"}]))[0] == 200


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_health_answers_head(guarded, path):
    status, _, body = request(guarded[0], "HEAD", path)
    assert (status, body) == (200, b"")
