"""A cap on the memory held by request bodies across all connections (each body is capped on its own too):
beyond it the server answers 503 with Retry-After and closes the connection instead of reading more."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from test_server_support import INPUT_SHAPE, request, running_server, tiny_models, tiny_request

from fakegradient.serving.errors import UploadsBusy
from fakegradient.serving.server import BodyHold, Limits, UploadBudget

MIB = 2**20
LIMITS = Limits(max_body_bytes=MIB, max_buffered_bytes=3 * MIB // 2, max_batch=4, max_inflight=4,
                header_timeout=30.0, body_timeout=30.0)
INFER = "/v2/models/tiny/infer"
GOOD = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, *INPUT_SHAPE)


def padded(size: int) -> bytes:
    """A good JSON request of exactly ``size`` bytes (trailing whitespace is valid JSON)."""
    body = tiny_request(GOOD)
    return body + b" " * (size - len(body))


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with running_server(tiny_models(tmp_path_factory.mktemp("models")), LIMITS) as address:
        yield address


def test_the_bodies_of_all_connections_together_are_capped(address):
    slow = socket.create_connection(address)
    body = padded(MIB)
    try:
        slow.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])  # then it stalls
        deadline, status = time.monotonic() + 30, 0
        while status != 503 and time.monotonic() < deadline:  # until the server has taken the stalled head
            status, headers, answer = request(address, "POST", INFER, padded(MIB // 2 + 1))
            assert status in (200, 503), (status, answer[:200])
        assert status == 503, "1 MiB held by a stalled body + 0.5 MiB + 1 byte more was not refused"
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "request bodies" in json.loads(answer)["error"]
        assert request(address, "POST", INFER, padded(MIB // 4))[0] == 200  # what fits is still served
        slow.sendall(body[100:])  # the stalled body completes: answered, and its share released
        slow.settimeout(30)
        assert slow.recv(64).startswith(b"HTTP/1.1 200 ")
    finally:
        slow.close()
    assert request(address, "POST", INFER, padded(MIB))[0] == 200


def test_refused_requests_release_their_share(address):
    for _ in range(4):  # each holds 1 MiB while it is read; 4 of them would exceed 1.5 MiB if kept
        status, _, answer = request(address, "POST", INFER, b"[" + b" " * (MIB - 1))
        assert status == 400 and "malformed JSON" in json.loads(answer)["error"]
    assert request(address, "POST", INFER, padded(MIB))[0] == 200


def test_a_body_without_a_declared_length_grows_its_share_until_the_budget_is_full():
    budget = UploadBudget(100)
    first, second = BodyHold(budget), BodyHold(budget)
    first.grow_to(60)
    second.grow_to(30)
    second.grow_to(20)  # never shrinks while held
    assert (budget.held, second.held) == (90, 30)
    with pytest.raises(UploadsBusy, match="holds 90 bytes of request bodies"):
        second.grow_to(41)
    first.release()
    second.grow_to(100)
    assert budget.held == 100
    second.release()
    second.release()  # idempotent
    assert budget.held == 0


def test_a_body_refused_for_lack_of_room_is_drained_so_that_the_client_reads_the_503(tmp_path):
    """A body larger than the sockets' buffers: were it not read, the client would get a reset, not the 503."""
    limits = Limits(max_body_bytes=16 * MIB, max_buffered_bytes=20 * MIB, header_timeout=30.0, body_timeout=60.0)
    with running_server(tiny_models(tmp_path), limits) as address:
        slow = socket.create_connection(address)
        try:
            slow.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {16 * MIB}\r\n\r\n".encode())
            deadline, status = time.monotonic() + 30, 0
            while status != 503 and time.monotonic() < deadline:
                status, _, answer = request(address, "POST", INFER, padded(8 * MIB))
                assert status in (200, 503), (status, answer[:200])
            assert status == 503 and "request bodies" in json.loads(answer)["error"]
        finally:
            slow.close()
