"""The server against hostile or broken clients: malformed requests (a fuzz campaign), JSON parsed off the
event loop, slow and idle connections, too many connections, too many requests at once; and what it no
longer serves (OpenAPI, versions other than 1). Loopback only; loops bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import socket
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
from fakegradient.serving.server import Batching, Limits

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
    length = draw(st.sampled_from(["right", "none", "int", "text"]) if binary else st.sampled_from(["none", "int"]))
    if length == "right":
        headers["Inference-Header-Content-Length"] = str(len(head))
    elif length == "int":
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-3, len(body) + 3)))
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
