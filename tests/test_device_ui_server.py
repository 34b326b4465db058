"""The device page's own HTTP server (``fakegradient device-ui``), in-process: a Host header naming another site
(DNS rebinding) is refused, every answer carries the security headers (error pages included), and a client that
trickles its request is dropped after a total time bound, not held by a thread for ever."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from fakegradient.serving.device_ui import SECURITY_HEADERS, PageHandler, host_allowed, page_server


@pytest.fixture
def page() -> Iterator[tuple[str, int]]:
    """The page server on 127.0.0.1 (class names: ["cat", "dog"]), serving in a thread: (host, port)."""
    server = page_server("127.0.0.1", 0, ["cat", "dog"])
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw ``request``; (status, headers, body) of the answer (the server closes after one)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(address: tuple[str, int], path: str, host: str | None) -> tuple[int, dict[str, str], bytes]:
    return exchange(address, f"GET {path} HTTP/1.1\r\n{f'Host: {host}' + chr(13) + chr(10) if host else ''}"
                             "Connection: close\r\n\r\n".encode())


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("LOCALHOST.:{port}", True), ("[::1]:{port}", True),
    ("127.0.0.1:9000", True),  # a tunnel's port
    ("192.168.1.5:{port}", True), (None, True),  # an address cannot be rebound; no Host: not a browser
    ("attacker.example:{port}", False), ("attacker.example", False), ("localhost.attacker.example:{port}", False),
    ("127.0.0.1.nip.io:{port}", False)])
def test_a_host_header_naming_another_site_is_refused(page, host, allowed):
    status, headers, body = get(page, "/labels.json", host and host.format(port=page[1]))
    if allowed:
        assert status == 200 and json.loads(body) == ["cat", "dog"]
    else:
        assert status == 403 and b"cat" not in body
    assert all(headers.get(name) == value for name, value in SECURITY_HEADERS.items()), headers


def test_the_name_given_as_host_is_allowed():
    assert host_allowed("device.lan:8080", "device.lan") and host_allowed("Device.LAN", "device.lan")
    assert not host_allowed("device.lan.attacker.example", "device.lan")
    assert not host_allowed("device.lan", "127.0.0.1")


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /nothing HTTP/1.0\r\n\r\n", 404), (b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405),
    (b"BREW / HTTP/1.0\r\n\r\n", 501), (b"GET / HTTP/1.0\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.0\r\n" + b"X: a\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.0\r\nHost: attacker.example\r\n\r\n", 403),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", 414)], ids=lambda v: str(v)[:30])
def test_error_pages_carry_the_security_headers(page, request_bytes, status):
    """(A request line without a valid HTTP version is answered as HTTP/0.9: a body with no head at all, which
    browsers do not render from a port other than 80.)"""
    got, headers, _ = exchange(page, request_bytes)
    assert got == status
    missing = {name for name, value in SECURITY_HEADERS.items() if headers.get(name) != value}
    assert not missing, (status, missing)


def test_a_client_trickling_its_request_is_dropped_after_the_total_bound(page, monkeypatch):
    """One byte of a header every 0.2 s, each well within the per-read timeout (10 s): the connection is closed
    once the request has taken ``request_seconds`` (1 s here) in all, long before the 100 bytes (20 s) are sent."""
    monkeypatch.setattr(PageHandler, "request_seconds", 1)
    with socket.create_connection(page, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nX-Slow: ")
        sent, closed = 0, False
        while sent < 100 and not closed:
            try:
                sock.sendall(b"a")
            except OSError:  # reset: closed
                closed = True
                break
            sent += 1
            if select.select([sock], [], [], 0.2)[0]:
                try:
                    closed = sock.recv(1024) == b""
                except OSError:
                    closed = True
    assert closed and sent < 50, sent  # ~5 bytes in; a timing margin of 10x


def test_a_request_in_time_is_answered_while_a_slow_one_is_open(page, monkeypatch):
    monkeypatch.setattr(PageHandler, "request_seconds", 1)
    with socket.create_connection(page, timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.0\r\n")
        status, _, body = get(page, "/labels.json", "localhost")
        assert status == 200 and json.loads(body) == ["cat", "dog"]
