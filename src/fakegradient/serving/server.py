"""``fakegradient serve``: the cloud side. Runs protected ONNX models; knows nothing of keys.

Open Inference Protocol v2 (KServe / Triton) over REST, served by FastAPI + uvicorn. Hostile clients
are bounded (:class:`Limits`): open connections, time to send a request's head and body, a head's size,
idle time between requests, body size, bodies held across all connections, requests in progress (503 +
Retry-After beyond), ONNX Runtime runs at once. JSON is parsed off the event loop, so health checks stay
fast under load. Concurrent requests are batched into one run (:mod:`.batching`). :class:`Access` sets what the
model metadata publishes, the bearer token every endpoint but health needs, and the web origins whose pages
may call the server (CORS; none by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
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
from .auth import bearer_matches
from .batching import Batching, DynamicBatcher
from .errors import (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    Unauthorized,
    UploadsBusy,
)
from .onnx_model import RuntimeOptions, ServedModel, load_model_dir
from .protocol import HEADER_LENGTH, build_infer_response, parse_header_length, parse_infer_request
from .triton import triton_parameters

JSON_GIL_BOUND_BYTES = 2**20  # JSON parsed over this size holds the GIL long: one such parse at a time


@dataclass(frozen=True)
class Limits:
    """What one client, or all of them together, may take of the server."""

    max_body_bytes: int = 64 * 2**20  # 64 MiB: ~21 images of 3x224x224 FP32 as JSON, ~110 as binary data
    max_buffered_bytes: int = 256 * 2**20  # bodies held at once, all connections together; 503 beyond
    max_batch: int = 64
    max_inflight: int = 32  # requests parsed, queued for or in inference; 503 + Retry-After beyond
    max_runs: int = 2  # ONNX Runtime runs at once (each uses all its intra-op threads)
    max_connections: int = 256  # open connections; beyond, those idle the longest are closed
    header_timeout: float = 10.0  # s to send a request's head, from connecting or the previous response
    max_head_bytes: int = 16 * 2**10  # a request's head: URL and headers (h11's default; 400 and closed beyond)
    body_timeout: float = 30.0  # s to send a request's body (408 beyond)
    keep_alive: float = 5.0  # s an idle connection stays open between requests


PUBLIC_METADATA = ("minimal", "full")
MINIMAL_PARAMETERS = ("fingerprint", "preprocess")  # what the device client needs, nothing more


@dataclass(frozen=True)
class Access:
    """Who may ask what. ``public_metadata``: ``minimal`` publishes only the model parameters the device
    client needs (fingerprint, preprocessing), ``full`` also the architecture, the class names, the output
    count and the model's digest. ``token``: when set, every endpoint but ``/v2/health/*`` needs
    ``Authorization: Bearer <token>`` (401 otherwise). ``cors_origins``: the web origins (``scheme://host[:port]``,
    as :func:`cors_origin` writes them) whose pages a browser lets call the server; none: no page of another
    origin may (no CORS headers at all). Each is checked and written as a browser sends it."""

    public_metadata: str = "minimal"
    token: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.public_metadata not in PUBLIC_METADATA:
            raise ValueError(f"public_metadata must be one of {PUBLIC_METADATA}, got {self.public_metadata!r}")
        object.__setattr__(self, "cors_origins", tuple(dict.fromkeys(map(cors_origin, self.cors_origins))))

    def parameters(self, model: ServedModel) -> dict[str, Any]:
        """The model's parameters this setting publishes."""
        published = model.parameters()
        if self.public_metadata == "full":
            return published
        return {k: v for k, v in published.items() if k in MINIMAL_PARAMETERS}


def cors_origin(text: str) -> str:
    """An origin a browser sends (``scheme://host[:port]``: lower case, no default port, no path) from what an
    operator typed; :class:`InvalidArgument` for anything else ("*" included: name each origin)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"CORS origin {text!r} is not an origin: {exc}") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise InvalidArgument(f"CORS origin {text!r} is not an origin: give scheme://host[:port], e.g. "
                              "http://127.0.0.1:8080 (the address the page is opened at)")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


# what a page may send (the bearer token, the binary tensor extension's header) and read (that header)
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", HEADER_LENGTH)
CORS_RESPONSE_HEADERS = (HEADER_LENGTH, "Retry-After")


def create_app(models: list[ServedModel], limits: Limits = Limits(), access: Access = Access(),
               batching: Batching = Batching()) -> FastAPI:
    """The v2 REST app serving ``models``. Every error answers ``{"error": "<message>"}``."""
    by_name = {m.name: m for m in models}
    runners = asyncio.Semaphore(limits.max_runs)  # ONNX Runtime runs at once, batched or not
    batchers = {m.name: DynamicBatcher(m.infer, batching, runners) for m in models} if batching.enabled else {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for batcher in batchers.values():
            batcher.close()

    app = FastAPI(title="fakegradient inference server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    add_error_handlers(app)
    if access.cors_origins:  # preflights are answered before routing: they need no token
        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=list(CORS_REQUEST_HEADERS), expose_headers=list(CORS_RESPONSE_HEADERS),
                           allow_private_network=True)
    inflight = 0
    gil_bound = anyio.CapacityLimiter(1)  # big JSON work holds the GIL: one at a time, the event loop between
    uploads = UploadBudget(limits.max_buffered_bytes)

    def authorize(request: Request) -> None:
        """401 unless the request carries the token (when the server has one)."""
        if access.token is None:
            return
        header = request.headers.get("authorization")
        if not bearer_matches(header, access.token):
            raise Unauthorized("a bearer token is needed (Authorization: Bearer <token>)" if header is None
                               else "invalid bearer token")

    def lookup(name: str, version: str = "1") -> ServedModel:
        """The served model ``name`` (version 1: the only one), or 404."""
        if name not in by_name:
            raise ModelNotFound(f"unknown model {name!r}; served: {sorted(by_name)}")
        if version != "1":
            raise ModelNotFound(f"model {name!r} has no version {version!r}; its only version is '1'")
        return by_name[name]

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata(request: Request):
        authorize(request)
        return {"name": "fakegradient", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        authorize(request)
        return [{"name": name, "version": "1", "state": "READY"} for name in by_name]

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str = "1"):
        authorize(request)
        model = lookup(name, version)
        return {
            "name": model.name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": model.input_shape}],
            "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": model.output_shape}],
            "parameters": access.parameters(model),
        }

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str = "1"):
        authorize(request)
        return {"name": lookup(name, version).name, "ready": True}

    @app.get("/v2/models/{name}/config")
    async def model_config(name: str, request: Request):
        """Triton's config endpoint, with the public parameters as Triton shows them (JSON-encoded strings,
        as ``export-triton`` writes them into config.pbtxt)."""
        authorize(request)
        model = lookup(name)
        return {"name": model.name, "platform": "onnxruntime_onnx", "max_batch_size": limits.max_batch,
                "parameters": triton_parameters(access.parameters(model))}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1"):
        authorize(request)  # before the body: strangers hold no memory
        hold = BodyHold(uploads)
        try:  # the body counts against the shared budget until its answer is built
            body = await _read_limited(request, limits, hold)  # read first: errors reach the client
            return await run(lookup(name, version), body, request.headers.get(HEADER_LENGTH))
        finally:
            hold.release()

    async def run(model: ServedModel, body: bytes, header_length: str | None) -> Response:
        """Parse, infer, answer: in threads, so that the event loop stays responsive."""
        nonlocal inflight
        length = parse_header_length(header_length)
        if inflight >= limits.max_inflight:
            raise ServerBusy(f"{inflight} requests in progress (the limit); retry later")
        inflight += 1
        try:
            big_json = (len(body) if length is None else length) > JSON_GIL_BOUND_BYTES
            parsed = await anyio.to_thread.run_sync(
                parse_infer_request, body, length, {"name": model.input_name, "shape": model.input_shape},
                limits.max_batch, limiter=gil_bound if big_json else None)
            batch = parsed.inputs[model.input_name]
            if model.name in batchers:
                logits = await batchers[model.name].submit(batch)
            else:
                async with runners:
                    logits = await anyio.to_thread.run_sync(model.infer, batch)
            payload, headers = await anyio.to_thread.run_sync(
                build_infer_response, model.name, {model.output_name: logits}, parsed.binary_outputs,
                parsed.request_id, limiter=None if parsed.binary_outputs else gil_bound)
        finally:
            inflight -= 1
        media = "application/octet-stream" if parsed.binary_outputs else "application/json"
        return Response(payload, media_type=media, headers=headers)

    return app


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


class UploadBudget:
    """Bytes of request bodies the server holds at once, across all connections (event loop only: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0


class BodyHold:
    """One request's share of the :class:`UploadBudget`: grows as its body is stored, released at the end."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget, self.held = budget, 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all; 503 (connection closed) if the budget has no room for them."""
        extra = size - self.held
        if extra <= 0:
            return
        if self.budget.held + extra > self.budget.limit:
            raise UploadsBusy(f"the server holds {self.budget.held} bytes of request bodies (the limit is "
                              f"{self.budget.limit}); retry later")
        self.budget.held += extra
        self.held = size

    def release(self) -> None:
        self.budget.held -= self.held
        self.held = 0


async def _read_limited(request: Request, limits: Limits, hold: BodyHold) -> bytes:
    """The body; 413 over max_body_bytes, 408 after body_timeout, 503 when the bodies of all requests would
    hold over max_buffered_bytes (a declared length is held from the start). A body that is refused is
    drained (up to 4x the limit, not stored) so that the client reads the 413 or 503 instead of a reset
    connection; beyond that the request is cut off."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 4 * limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    busy: UploadsBusy | None = None

    def grow(size: int) -> None:
        nonlocal busy
        try:
            hold.grow_to(size)
        except UploadsBusy as exc:  # from now on the body is drained, not stored
            busy = exc
            hold.release()

    if declared is not None and declared.isdigit() and int(declared) <= limit:
        grow(int(declared))  # before reading: a client cannot make the server hold what is not there
    chunks, size = [], 0
    try:
        with anyio.fail_after(limits.body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > 4 * limit:
                    break
                if size <= limit and busy is None:
                    grow(size)
                    chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body took over {limits.body_timeout:g} s to arrive") from None
    except ClientDisconnect:  # nobody to answer: not worth a traceback in the log
        raise InvalidInput("the client disconnected before sending its whole body") from None
    if size > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    if busy is not None:
        raise busy
    return b"".join(chunks)


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


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol (h11), guarded; h11 bounds a head itself
    (``h11_max_incomplete_event_size``, set to ``max_head_bytes`` by :func:`build_server`)."""


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
                 batching: Batching = Batching(), http: str = defaults.HTTP) -> uvicorn.Server:
    """The uvicorn server (not started) for ``models`` under ``limits``; run it with ``.run(sockets=...)``.
    ``http``: the HTTP/1.1 parser, one of :data:`defaults.HTTP_PARSERS`."""
    protocol = functools.partial(_guarded(http), limits=limits, cap=ConnectionCap(limits.max_connections))
    config = uvicorn.Config(create_app(models, limits, access, batching), log_level="warning",
                            http=protocol,  # type: ignore[arg-type]  # a factory of protocols works too
                            h11_max_incomplete_event_size=limits.max_head_bytes,
                            loop="asyncio",  # not uvloop, which uvicorn picks when installed: under
                            # benchmarks/serving.py --hostile its health checks p99 was 6-10x that of asyncio
                            timeout_keep_alive=limits.keep_alive)  # type: ignore[arg-type]  # float works
    return uvicorn.Server(config)


def serve(model_dirs: list[Path], host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          runtime: RuntimeOptions | None = None, access: Access = Access(), batching: Batching = Batching(),
          http: str = defaults.HTTP) -> None:
    """Load ``model_dirs`` (each checked: no key file, head matching its fingerprint) and serve them."""
    _guarded(http)  # an unknown or missing HTTP implementation: refused before loading the models
    models = [load_model_dir(d, runtime=runtime or RuntimeOptions()) for d in model_dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise FakeGradientError(f"two model folders share a name: {names}")
    sock = listen(host, port)
    print(f"serving {', '.join(names)} on http://{host}:{sock.getsockname()[1]} (Open Inference Protocol v2)",
          flush=True)
    build_server(models, limits, access, batching, http).run(sockets=[sock])
