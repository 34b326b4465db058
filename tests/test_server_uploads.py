"""A cap on the memory held by request bodies across all connections (each body is capped on its own too),
charged with the bytes that arrived, shared fairly: beyond it the server answers 503 with Retry-After and
closes the connection instead of reading more, to the body over its share."""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager

import numpy as np
import pytest
from test_server_support import INPUT_SHAPE, in_thread, request, tiny_models, tiny_request

from fakegradient.serving.dataplane import BodyHold, DataPlane, UploadBudget
from fakegradient.serving.errors import UploadsBusy
from fakegradient.serving.server import Limits, build_server

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
def served(tmp_path_factory):
    """(address, data plane) of the real server under LIMITS."""
    plane = DataPlane(tiny_models(tmp_path_factory.mktemp("models")), LIMITS)
    with serving(plane) as address:
        yield address, plane


@contextmanager
def serving(plane: DataPlane):
    server = build_server([], plane=plane)
    server.config.log_config = None
    with in_thread(server) as address:
        yield address


def stalled(address, declared: int, sent: int) -> socket.socket:
    """A connection that declares a body of ``declared`` bytes, sends ``sent`` of them, then stalls."""
    sock = socket.create_connection(address)
    sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + padded(declared)[:sent])
    return sock


def until(condition, seconds: float = 30) -> None:
    """Wait (bounded) until ``condition()`` holds: the server has taken what a client sent."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not take the bytes sent"
        time.sleep(0.01)


def status_line(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    return sock.recv(64).split(b"\r\n")[0]


def test_a_body_over_its_fair_share_is_refused_when_the_bodies_of_all_connections_fill_the_cap(served):
    """The cap holds: a stalled body holds 0.7 MiB (under its share, 1.5 MiB / 2), so a 1 MiB request, over
    its share when the cap is reached, is refused 503; a smaller one fits and is served."""
    address, plane = served
    slow = stalled(address, declared=MIB, sent=7 * MIB // 10)
    try:
        until(lambda: plane.uploads.held >= 7 * MIB // 10)
        status, headers, answer = request(address, "POST", INFER, padded(MIB))
        assert status == 503, answer[:200]
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "request bodies" in json.loads(answer)["error"]
        assert request(address, "POST", INFER, padded(MIB // 4))[0] == 200  # what fits is still served
        slow.sendall(padded(MIB)[7 * MIB // 10:])  # the stalled body completes: answered, its share released
        assert status_line(slow) == b"HTTP/1.1 200 OK"
    finally:
        slow.close()
    assert request(address, "POST", INFER, padded(MIB))[0] == 200
    until(lambda: plane.uploads.held == 0)


def test_a_stalled_body_over_its_fair_share_is_dropped_for_a_body_within_its_own(served):
    """0.9 MiB held by a stalled body (declaring 1 MiB): a 0.75 MiB request (within its share, 1.5 MiB / 2)
    takes its room and is served (it was refused 503: the stalled body held its whole declared length); the
    stalled body, dropped, is answered 503 once the rest of it arrives."""
    address, plane = served
    slow = stalled(address, declared=MIB, sent=9 * MIB // 10)
    try:
        until(lambda: plane.uploads.held >= 9 * MIB // 10)
        status, _, answer = request(address, "POST", INFER, padded(3 * MIB // 4))
        assert status == 200, answer[:200]
        slow.sendall(padded(MIB)[9 * MIB // 10:])
        assert status_line(slow) == b"HTTP/1.1 503 Service Unavailable"
    finally:
        slow.close()
    until(lambda: plane.uploads.held == 0)


def test_refused_requests_release_their_share(served):
    address, plane = served
    for _ in range(4):  # each holds 1 MiB while it is read; 4 of them would exceed 1.5 MiB if kept
        status, _, answer = request(address, "POST", INFER, b"[" + b" " * (MIB - 1))
        assert status == 400 and "malformed JSON" in json.loads(answer)["error"]
    assert request(address, "POST", INFER, padded(MIB))[0] == 200
    until(lambda: plane.uploads.held == 0)


def test_heads_declaring_the_largest_body_then_idling_do_not_lock_others_out(tmp_path):
    """4 connections each declare a 64 MiB body (the default limit; 4 x 64 MiB = the default cap on bodies held),
    send one byte and idle: the budget is charged with bytes that arrived, not declared, so a well-behaved
    client is still served (it got 503 for as long as they idled, 30 s a time)."""
    limits = Limits(header_timeout=30.0, body_timeout=60.0)
    plane = DataPlane(tiny_models(tmp_path), limits)
    with serving(plane) as address:
        attackers = []
        try:
            for _ in range(limits.max_buffered_bytes // limits.max_body_bytes):
                sock = socket.create_connection(address)
                attackers.append(sock)
                sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {limits.max_body_bytes}\r\n"
                             "Expect: 100-continue\r\n\r\n".encode())
                assert status_line(sock) == b"HTTP/1.1 100 Continue"  # the server reads this body now
                sock.sendall(b"{")
            for _ in range(5):
                status, _, answer = request(address, "POST", INFER, tiny_request(GOOD))
                assert status == 200, answer[:200]
        finally:
            for sock in attackers:
                sock.close()


def test_the_budget_charges_what_arrives_and_shares_it_fairly():
    budget = UploadBudget(100)
    first, second, third = BodyHold(budget), BodyHold(budget), BodyHold(budget)
    first.add(b"x" * 60)
    second.grow_to(30)
    second.grow_to(20)  # never shrinks while held
    assert (budget.held, second.held, first.body()) == (90, 30, b"x" * 60)
    with pytest.raises(UploadsBusy, match="holds 90 bytes of request bodies"):
        second.grow_to(51)  # over its share (100 / 2), and first's body is whole: nothing to drop
    first.release()
    third.add(b"y" * 55)  # (30 + 55 held) + 20 > 100: third, at 75, would be over its share (100 / 2)
    with pytest.raises(UploadsBusy):
        third.add(b"y" * 20)
    second.grow_to(50)  # second, at 50, is within its share: third (55, still arriving, over 50) is dropped
    assert (budget.held, third.held, third.chunks, third.evicted) == (50, 0, [], True)
    with pytest.raises(UploadsBusy):  # the dropped body refuses what comes after (then drained, answered 503)
        third.add(b"y")
    second.release()
    second.release()  # idempotent
    assert budget.held == 0 and not budget.holds


def test_a_body_refused_for_lack_of_room_is_drained_so_that_the_client_reads_the_503(tmp_path):
    """A body larger than the sockets' buffers: were it not read, the client would get a reset, not the 503."""
    limits = Limits(max_body_bytes=16 * MIB, max_buffered_bytes=20 * MIB, header_timeout=30.0, body_timeout=60.0)
    plane = DataPlane(tiny_models(tmp_path), limits)
    with serving(plane) as address:
        slow = stalled(address, declared=16 * MIB, sent=19 * MIB // 2)  # 9.5 MiB: within its share
        try:
            until(lambda: plane.uploads.held >= 19 * MIB // 2)
            status, _, answer = request(address, "POST", INFER, padded(16 * MIB))  # over its share at 10.5 MiB
            assert status == 503 and "request bodies" in json.loads(answer)["error"]
        finally:
            slow.close()
