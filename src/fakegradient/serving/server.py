"""``fakegradient serve``: the cloud side. Runs protected ONNX models; knows nothing of keys.

The REST transport of the Open Inference Protocol v2 (KServe / Triton), served by FastAPI + uvicorn: routes
that read what a request carries and ask the :class:`~.dataplane.DataPlane` (auth, lookup, admission, batching,
parse / run / answer, metadata), plus the transport's guards. Hostile clients are bounded (:class:`Limits`):
open connections, time to send a request's head and body, a head's size, idle time between requests, body
size, bodies held across all connections, requests in progress (503 + Retry-After beyond), ONNX Runtime runs
at once. :class:`Access` sets what the model metadata publishes, the bearer token every endpoint but health
needs, and the web origins whose pages may call the server (CORS; none by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import __version__, defaults
from ..errors import FakeGradientError, InvalidArgument
from .dataplane import BodyHold, DataPlane, UploadBudget
from .errors import InvalidInput, PayloadTooLarge, ProtocolError, RequestTimeout, UploadsBusy
from .metrics import RequestMetrics, recorder
from .onnx_model import ServedModel, load_model_dir
from .protocol import HEADER_LENGTH
from .settings import Access, Batching, Limits, Observability, RuntimeOptions, cors_origin

__all__ = ["Access", "Batching", "BodyHold", "DataPlane", "Limits", "UploadBudget", "build_server", "cors_origin",
           "create_app", "listen", "rest_app", "serve"]

# what a page may send (the bearer token, the binary tensor extension's header) and read (that header)
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", HEADER_LENGTH)
CORS_RESPONSE_HEADERS = (HEADER_LENGTH, "Retry-After")


def create_app(models: list[ServedModel], limits: Limits = Limits(), access: Access = Access(),
               batching: Batching = Batching()) -> FastAPI:
    """The v2 REST app serving ``models``. Every error answers ``{"error": "<message>"}``."""
    return rest_app(DataPlane(models, limits, access, batching))


def rest_app(plane: DataPlane) -> FastAPI:
    """The v2 REST routes on ``plane``: each reads what the request carries, asks the data plane, answers."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        plane.close()

    app = FastAPI(title="fakegradient inference server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.plane = plane
    add_error_handlers(app)
    if plane.metrics.per_request:  # metrics or access log; added first: inside CORS, which answers preflights
        app.add_middleware(RequestMetrics, metrics=plane.metrics)
    if plane.access.cors_origins:  # preflights are answered before routing: they need no token
        app.add_middleware(JSONCORSMiddleware, allow_origins=list(plane.access.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=list(CORS_REQUEST_HEADERS),
                           expose_headers=list(CORS_RESPONSE_HEADERS), allow_private_network=True)
    app.add_middleware(HeadGuard, limits=plane.limits)  # the outermost: before anything reads the request

    def authorize(request: Request) -> None:
        plane.authorize(request.headers.get("authorization"))

    @app.api_route("/v2/health/live", methods=["GET", "HEAD"])  # HEAD: the same answer without its body
    async def live():
        return plane.live()

    @app.api_route("/v2/health/ready", methods=["GET", "HEAD"])
    async def ready():
        return plane.ready()

    @app.get("/v2")
    async def server_metadata(request: Request):
        authorize(request)
        return plane.server_metadata()

    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        authorize(request)
        return plane.repository_index()

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1"):
        authorize(request)
        return plane.model_metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = "1"):
        authorize(request)
        return plane.model_ready(name, version)

    @app.get("/v2/models/{name}/config")
    async def model_config(name: str, request: Request):
        authorize(request)
        return plane.model_config(name)

    if plane.metrics.enabled:  # off (serve --no-metrics): no route, 404
        @app.get("/metrics")
        async def metrics(request: Request):
            authorize(request)
            body, media_type = plane.metrics.exposition()
            return Response(body, media_type=media_type)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1"):
        authorize(request)  # before the body: strangers hold no memory
        hold = plane.hold()
        try:  # the body counts against the shared budget until its answer is built
            body = await _read_limited(request, plane.limits, hold)  # read first: errors reach the client
            answer = await plane.infer_body(name, body, request.headers.get(HEADER_LENGTH), version)
        finally:
            hold.release()
        return Response(answer.body, media_type=answer.media_type, headers=answer.headers)

    return app


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered ``{"error": ...}`` as every other error."""

    def preflight_response(self, request_headers: Any) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        vary = {"Vary": response.headers["vary"]} if "vary" in response.headers else None
        return _error(response.status_code, f"CORS preflight refused: {bytes(response.body).decode()}", vary)


class HeadGuard:
    """ASGI middleware for what the HTTP parsers leave through, each answered ``{"error"}`` and closed: a head
    over ``max_head_bytes`` or with over ``max_header_fields`` lines (431: h11 bounds only a head still
    unfinished, and the httptools guard a head arriving in pieces; a whole head in one read passed), and a
    request with both Content-Length and Transfer-Encoding (400, RFC 9112 §6.1: h11 took the chunked body and
    kept the connection, so a pipelined request behind it was answered; httptools refuses it itself)."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                await _error(*problem, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, scope: dict) -> tuple[int, str] | None:
        headers = scope["headers"]
        if len(headers) > self.limits.max_header_fields:
            return 431, f"over {self.limits.max_header_fields} header lines"
        query = scope.get("query_string", b"")
        size = (len(scope["method"]) + len(scope.get("raw_path") or b"") + (len(query) + 1 if query else 0) + 12
                + sum(len(name) + len(value) + 4 for name, value in headers) + 2)
        if size > self.limits.max_head_bytes:
            return 431, f"request head over {self.limits.max_head_bytes} bytes"
        names = {name for name, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            return 400, "both Content-Length and Transfer-Encoding (RFC 9112 section 6.1)"
        return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body the server sends."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error, ours and FastAPI's own, as ``{"error": "<message>"}`` (what tritonclient reads)."""

    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own: unknown route (404), wrong method (405, keeps the Allow header)."""
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}"
                             for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """A bug: a generic 500 for the client; the traceback goes to the server's log only."""
        return _error(500, "internal server error")

    app.add_exception_handler(ProtocolError, protocol_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


async def _read_limited(request: Request, limits: Limits, hold: BodyHold) -> bytes:
    """The body, stored in ``hold`` as it arrives; 413 over max_body_bytes, 408 after body_timeout, 503 when the
    upload budget has no room for it (or dropped it for another body: :class:`~.dataplane.UploadBudget`). A
    body that is refused is drained (up to 4x the limit, not stored) so that the client reads the 413 or 503
    instead of a reset connection; beyond that the request is cut off. Bytes not yet read stay in the
    connection's buffer (uvicorn stops reading a connection beyond 64 KiB) and the kernel's."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")  # a number of at most 20 digits (both parsers check)
    if declared is not None and declared.isdigit() and int(declared) > 4 * limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    busy: UploadsBusy | None = None
    size = 0
    try:
        with anyio.fail_after(limits.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > 4 * limit:
                    break
                if size <= limit and busy is None:
                    try:
                        hold.add(chunk)
                    except UploadsBusy as exc:  # from now on the body is drained, not stored
                        busy = exc
                        hold.release()
    except TimeoutError:
        raise RequestTimeout(f"the request body took over {limits.body_timeout:g} s to arrive") from None
    except ClientDisconnect:  # nobody to answer: not worth a traceback in the log
        raise InvalidInput("the client disconnected before sending its whole body") from None
    if size > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    if busy is not None:
        raise busy
    if hold.evicted:  # dropped while its last bytes were on the way
        raise hold.budget.busy()
    return hold.body()


class ConnectionCap:
    """Shared by a server's connections: while more than ``limit`` are open, closes those waiting the longest
    for a request head, sparing those younger than ``grace`` seconds: a real client sends its head at once,
    so a flood of idle connections evicts itself, not the clients."""

    def __init__(self, limit: int, grace: float = 0.1) -> None:
        self.limit, self.grace, self.pending = limit, grace, False

    def arrived(self, connection: _Guard) -> None:
        if len(connection.connections) > self.limit and not self.pending:
            self.pending = True
            connection.loop.call_later(self.grace, self._enforce, connection.loop, connection.connections)

    def _enforce(self, loop: asyncio.AbstractEventLoop, connections: set) -> None:
        self.pending = False
        alive = [c for c in connections if not c.transport.is_closing()]
        old = loop.time() - self.grace
        waiting = [c for c in alive if getattr(c, "idle_since", None) is not None]
        idle = sorted((c for c in waiting if c.idle_since <= old), key=lambda c: c.idle_since)
        excess = len(alive) - self.limit
        for connection in idle[:excess]:
            connection.transport.close()
        if excess > len(idle):  # the rest are too young yet
            self.pending = True
            loop.call_later(self.grace, self._enforce, loop, connections)


class _Guard(asyncio.Protocol):
    """A cap on open connections and a deadline for each request's head, mixed into uvicorn's HTTP/1.1
    protocols (uvicorn has neither: idle or slow connections would be kept forever)."""

    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]

    def __init__(self, *args: Any, limits: Limits, cap: ConnectionCap, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits, self.cap = limits, cap
        self.idle_since: float | None = None  # when it began waiting for a request head
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        no_delay(transport)
        self._await_head()
        self.cap.arrived(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # a head arrived
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self.idle_since = self.loop.time()
        self.deadline = self.loop.call_later(self.limits.header_timeout, self._expire)

    def _stop_waiting(self) -> None:
        self.idle_since = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        if self.idle_since is not None:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses, as ``{"error"}`` JSON, and only where no answer to this
        request has begun: after an early 401, a chunked body going bad made h11 raise (a traceback in the log
        each time) and httptools send a second answer. The request's application, if it still runs, answers
        into nowhere (as to a client gone)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing() and not self._answered():
            body = json.dumps({"error": msg}).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: "
                                 b"close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _answered(self) -> bool:
        """Whether an answer to the request being parsed has begun."""
        raise NotImplementedError


def no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on a connection: uvicorn writes an answer's head and body apart, and with Nagle's algorithm
    the body waited for the client's delayed ACK, 40 ms, on every request after a connection's first (asyncio
    sets it only on sockets made with IPPROTO_TCP, and ``socket.create_server`` makes them with 0)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol (h11), guarded; h11 bounds a head itself
    (``h11_max_incomplete_event_size``, set to ``max_head_bytes`` by :func:`build_server`)."""

    def _answered(self) -> bool:
        return self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE)


@functools.cache
def _guarded_httptools() -> type[_Guard]:
    """The httptools protocol, guarded (one class; httptools is imported only when asked for)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
        """uvicorn's HTTP/1.1 protocol on httptools (llhttp, C), guarded, with the bound on a request's head
        that httptools lacks (it keeps an unfinished header value whole, and reads on behind a request in
        progress, where h11 stops): a chunk counts when a head is unfinished at its end and the chunk began
        inside that head or between messages; so the rest of a body after an early answer never counts."""

        in_message = in_head = False
        head_bytes = 0

        def on_message_begin(self) -> None:
            self.in_message, self.in_head, self.head_bytes = True, True, 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.in_message = False
            super().on_message_complete()

        def _answered(self) -> bool:  # in a body: the cycle is this request's (a new one begins with a head)
            return self.in_message and not self.in_head and self.cycle is not None and self.cycle.response_started

        def data_received(self, data: bytes) -> None:
            whole = self.in_head or not self.in_message  # no byte of this chunk belongs to an earlier body
            super().data_received(data)
            if self.in_head and whole and not self.transport.is_closing():
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_head_bytes:
                    self.send_400_response("Request head too large.")

    return GuardedHttpToolsProtocol


def _guarded(http: str) -> type[_Guard]:
    """The guarded protocol class of the HTTP parser ``http`` (one of :data:`defaults.HTTP_PARSERS`)."""
    if http not in defaults.HTTP_PARSERS:
        raise InvalidArgument(f"--http must be one of {', '.join(defaults.HTTP_PARSERS)}, got {http!r}")
    if http == "h11":
        return GuardedH11Protocol
    try:
        import httptools  # noqa: F401  (uvicorn's module may be imported already: ask for the package itself)
    except ImportError:
        raise FakeGradientError(f"--http {http} needs the httptools package: pip install httptools") from None
    return _guarded_httptools()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or a one-line error (port in use, unknown host...)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FakeGradientError(f"cannot listen on {host}:{port}: {reason}") from None


def build_server(models: list[ServedModel], limits: Limits = Limits(), access: Access = Access(),
                 batching: Batching = Batching(), http: str = defaults.HTTP, *,
                 plane: DataPlane | None = None) -> uvicorn.Server:
    """The uvicorn server (not started) for ``models`` under ``limits``; run it with ``.run(sockets=...)``.
    ``http``: the HTTP/1.1 parser, one of :data:`defaults.HTTP_PARSERS`. ``plane``: a data plane shared with
    another transport (then ``models``, ``limits``, ``access`` and ``batching`` are its own)."""
    plane = plane or DataPlane(models, limits, access, batching)
    limits = plane.limits
    protocol = functools.partial(_guarded(http), limits=limits, cap=ConnectionCap(limits.max_connections))
    config = uvicorn.Config(rest_app(plane), log_level="warning",
                            http=protocol,  # type: ignore[arg-type]  # a factory of protocols works too
                            h11_max_incomplete_event_size=limits.max_head_bytes,
                            loop="asyncio",  # not uvloop, which uvicorn picks when installed: under
                            # benchmarks/serving.py --hostile its health checks p99 was 6-10x that of asyncio
                            timeout_keep_alive=limits.keep_alive)  # type: ignore[arg-type]  # float works
    return uvicorn.Server(config)


def serve(model_dirs: list[Path], host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          runtime: RuntimeOptions | None = None, access: Access = Access(), batching: Batching = Batching(),
          http: str = defaults.HTTP, grpc_port: int | None = None,
          observability: Observability = Observability()) -> None:
    """Load ``model_dirs`` (each checked: no key file, head matching its fingerprint) and serve them, over
    gRPC too on ``grpc_port`` (same host, same data plane) unless it is None; ``observability``: metrics
    (``GET /metrics``) on or off, the access log (one line per request on stderr) on or off."""
    _guarded(http)  # an unknown or missing HTTP implementation: refused before loading the models
    runtime = (runtime or RuntimeOptions()).for_runs(limits.max_runs)
    models = [load_model_dir(d, runtime=runtime) for d in model_dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise FakeGradientError(f"two model folders share a name: {names}")
    sock = listen(host, port)
    print(f"serving {', '.join(names)} on http://{host}:{sock.getsockname()[1]} (Open Inference Protocol v2)",
          flush=True)
    plane = DataPlane(models, limits, access, batching, recorder(observability))
    rest = build_server(models, http=http, plane=plane)
    if grpc_port is None:
        rest.run(sockets=[sock])
        return
    from .grpc_transport import run_with_grpc  # needs grpcio

    run_with_grpc(rest, [sock], plane, host, grpc_port)
