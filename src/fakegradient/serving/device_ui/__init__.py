"""``fakegradient device-ui``: the device as a web page. Serves this folder's static page (index.html, style.css
and the ES modules device.js, cloud.js, keyfile.js, preprocess.js, common.js) on localhost with the standard library, and the class names it is given (``/labels.json``); the page
reads the key and the photos in the browser, preprocesses, calls the cloud server (Open Inference Protocol v2,
binary tensors) and decrypts there. This server never sees the key, the photos or the server's answers."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import sys
import time
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from ...errors import FakeGradientError
from ..client import load_labels

PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/style.css": "style.css",
              **{f"/{name}": name for name in ("device.js", "cloud.js", "keyfile.js", "preprocess.js", "common.js")}}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}
# the page runs its own script and style only, may load the photos it is given (blob:) and call any server
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src http: https:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REQUEST_SECONDS = 20  # a connection's whole request, however slowly it trickles in (each read: ``timeout``)


def page_files(labels: list[str] | None = None) -> dict[str, tuple[bytes, str]]:
    """URL path → (content, media type) of the page's files, read from the installed package, and
    ``/labels.json``: the class names given, or null."""
    folder = resources.files(__name__)
    files = {path: ((folder / name).read_bytes(), MEDIA_TYPES[name[name.rindex("."):]])
             for path, name in PAGE_FILES.items()}
    files["/labels.json"] = (json.dumps(labels).encode(), "application/json")  # null: none given
    return files


class PageHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the page's files; 404 for any other path, 405 for any other method, 403 for a Host header that
    names neither this machine nor the address the page was served on (DNS rebinding); the security headers on
    every answer; a request that takes more than ``request_seconds`` in all is dropped; no logging."""

    server_version = "fakegradient-device-ui"
    timeout = 10  # seconds a connection may wait for each piece of its request
    request_seconds = REQUEST_SECONDS

    def __init__(self, *args, files: dict[str, tuple[bytes, str]], host: str = "127.0.0.1", **kwargs) -> None:
        self.files = files
        self.bound_host = host
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + self.request_seconds,
                                                       self.timeout))

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():  # every answer, error pages included
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if not host_allowed(self.headers.get("Host"), self.bound_host):
            self.send_error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return
        path = self.path.split("?", 1)[0]
        if path == "/favicon.ico":  # browsers ask for it; the page has none
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        found = self.files.get(path)
        content, media = found or (b"not found\n", "text/plain; charset=utf-8")
        self.send_response(HTTPStatus.OK if found else HTTPStatus.NOT_FOUND)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting at most ``per_read`` seconds and all of them ending by ``deadline``: a client
    trickling its request a byte at a time cannot hold the thread that reads it."""

    def __init__(self, sock: socket.socket, deadline: float, per_read: float) -> None:
        self.sock, self.deadline, self.per_read = sock, deadline, per_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # a writable buffer
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        self.sock.settimeout(min(left, self.per_read))
        return self.sock.recv_into(buffer)


def host_allowed(header: str | None, bound_host: str) -> bool:
    """Whether a request's ``Host`` header may be answered: an IP address, ``localhost``, or the name the page was
    served on (``--host``); any port (an SSH tunnel changes it). A page of another name that the DNS points here
    (DNS rebinding) is refused, so it cannot read ``/labels.json``. No header (not a browser): answered."""
    if header is None:
        return True
    name = header.strip()
    if name.startswith("["):  # [IPv6]:port
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    name = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name == "localhost" or name == bound_host.strip("[]").lower().rstrip(".")


def page_server(host: str = "127.0.0.1", port: int = 8080, labels: list[str] | None = None) -> ThreadingHTTPServer:
    """The page's HTTP server bound to ``host:port`` (not yet serving), offering ``labels`` to the page; a one-line
    error if it cannot listen."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError) as exc:
        raise FakeGradientError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    try:
        return Server((host, port), partial(PageHandler, files=page_files(labels), host=host))
    except (OSError, OverflowError) as exc:
        raise FakeGradientError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def page_url(server: ThreadingHTTPServer, host: str) -> str:
    """The address to open the page at (its origin is what ``serve --cors-origin`` must allow)."""
    port = server.server_address[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}"


def serve_page(host: str = "127.0.0.1", port: int = 8080, labels_path: str | Path | None = None) -> None:
    """Serve the page until interrupted, printing its address and the ``serve`` option that lets it call a server.
    ``labels_path``: class names for the page (as ``classify --labels`` reads them: the protected model's folder or
    model.onnx, a JSON list, or one name per line)."""
    labels = load_labels(labels_path) if labels_path is not None else None
    server = page_server(host, port, labels)
    url = page_url(server, host)
    if not is_loopback(host):
        print(f"warning: --host {host} lets other machines load the page (never a key: keys stay in the browser "
              "that opens the page); from an address other than localhost the page is not a secure context, so "
              "it cannot verify the key file's checksum", file=sys.stderr)
    print(f"device page on {url}/ — open it in a browser; the cloud server must allow this origin: "
          f"fakegradient serve MODEL_DIR --cors-origin {url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
