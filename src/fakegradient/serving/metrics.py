"""What the server counts, for Prometheus (``GET /metrics``), and the access log: one registry per data plane,
fed by both transports (REST and gRPC) through :meth:`Metrics.request`, and by the data plane itself (ONNX
Runtime runs and their batch sizes; in-flight requests, queue depth and upload bytes read at scrape time).

Series (``transport``: rest or grpc; ``method``: the v2 operation, e.g. ModelInfer, the same for both):

- ``fakegradient_requests_total{transport,method,code}``: answers by status (HTTP code or gRPC status name)
- ``fakegradient_request_duration_seconds{transport,method}``: time from request to answer (histogram)
- ``fakegradient_rejected_total{transport,limit}``: refused by a limit: ``busy`` (503 / UNAVAILABLE: requests
  in progress, upload budget), ``size`` (413 / RESOURCE_EXHAUSTED: body, message or batch), ``time`` (408)
- ``fakegradient_batch_size``: images per ONNX Runtime run (histogram), ``fakegradient_runs_in_progress``
- ``fakegradient_inflight_requests``, ``fakegradient_queue_depth`` (admitted, waiting for a runner or in a
  batcher's queue), ``fakegradient_upload_bytes_held``

The access log (off unless asked for): one line per request on the ``fakegradient.access`` logger (stderr):
peer, transport, operation and target (path, or gRPC model name), status, milliseconds; never a payload or a
header, so never a token.

With metrics off (``serve --no-metrics``) the data plane holds a :class:`NoMetrics`: the same interface, nothing
counted (no registry, no REST middleware unless the access log is on, ONNX Runtime runs not wrapped), and the
REST transport has no ``/metrics`` route (404). :func:`recorder` picks one from the :class:`Observability` setting.
"""

from __future__ import annotations

import atexit
import collections
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .settings import Observability

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LIMIT_OF = {"503": "busy", "413": "size", "408": "time",
            "UNAVAILABLE": "busy", "RESOURCE_EXHAUSTED": "size", "DEADLINE_EXCEEDED": "time"}
ACCESS_LOGGER = "fakegradient.access"
ACCESS_FORMAT = "%(asctime)s %(message)s"  # one line: time, then the request
ACCESS_MESSAGE = "%s %s %s %s %s %.1fms"  # peer, transport, operation, target, status, milliseconds
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_REST_METHODS = [  # (path pattern, operation), first match wins
    (re.compile(r"^/v2/health/live$"), "ServerLive"), (re.compile(r"^/v2/health/ready$"), "ServerReady"),
    (re.compile(r"^/v2/?$"), "ServerMetadata"), (re.compile(r"^/v2/repository/index$"), "RepositoryIndex"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "ModelInfer"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), "ModelReady"),
    (re.compile(r"^/v2/models/[^/]+/config$"), "ModelConfig"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "ModelMetadata"), (re.compile(r"^/metrics$"), "Metrics"),
]


def rest_method(path: str) -> str:
    """The v2 operation a REST path names (``other`` for any other path: bounded label values)."""
    return next((name for pattern, name in _REST_METHODS if pattern.match(path)), "other")


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for one log line: non-printable characters escaped, at most ``limit`` characters."""
    clean = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


class BufferedStderr(logging.Handler):
    """A handler that only keeps records (in the emitting thread: the event loop) and writes them from a thread
    of its own every ``interval`` seconds, formatted and joined into one write to ``stream`` (default:
    ``sys.stderr`` at the time of writing). The writer wakes a few times a second, not once per request: a thread
    woken per line competes for the GIL and, on a busy machine, for a core. At most ``capacity`` records wait;
    more are dropped and counted (one line says how many). Closing (and the exit of the process) writes what is
    left; the writer thread starts with the first record."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, capacity: int = 10_000) -> None:
        super().__init__()
        self.stream, self.interval, self.capacity = stream, interval, capacity
        # (record, or its parts); appended under the handler's lock, taken from the left by flush() alone
        self.pending: collections.deque[tuple[logging.LogRecord | None, tuple | None]] = collections.deque()
        self.dropped = self.dropped_told = 0  # lines dropped so far (under the lock), of them told by a line
        self.writing = threading.Lock()  # one writer at a time: lines stay in order
        self.writer: tuple[threading.Thread, threading.Event] | None = None
        atexit.register(self.close)

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        self._keep((record, None))

    def keep(self, created: float, msg: str, args: tuple) -> None:
        """A line on the :data:`ACCESS_LOGGER` at INFO without a :class:`logging.LogRecord`: the writer thread
        makes it (``created``: ``time.time()`` of the event), so the emitting thread pays one append."""
        with self.lock:  # type: ignore[union-attr]  # logging.Handler creates it
            self._keep((None, (created, msg, args)))

    def _keep(self, item: tuple[logging.LogRecord | None, tuple | None]) -> None:
        if len(self.pending) < self.capacity:
            self.pending.append(item)
        else:
            self.dropped += 1
        if self.writer is None:  # the first record, or the first after a close (logging.config closes every
            stop = threading.Event()  # handler it finds: uvicorn's start does)
            thread = threading.Thread(target=self._write_until, args=(stop,), name="fakegradient-access-log",
                                      daemon=True)
            thread.start()
            self.writer = thread, stop

    def _write_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        """Write what waits, in order. Never takes the handler's lock: ``logging.shutdown`` (which
        ``logging.config`` runs) holds it while calling this, and a writer waiting for it would deadlock."""
        with self.writing:
            items = [self.pending.popleft() for _ in range(len(self.pending))]
            dropped = self.dropped - self.dropped_told  # the count only grows: read once, no lock needed
            self.dropped_told += dropped
            if not items and not dropped:
                return
            lines = []
            for record, parts in items:
                record = record or _record(*parts)
                try:
                    lines.append(self.format(record) + "\n")
                except Exception:  # noqa: BLE001 - an operator's formatter failed: logging's report, the writer goes on
                    self.handleError(record)
            if dropped:
                lines.append(f"{dropped} access-log lines dropped: more than {self.capacity} waited to be written\n")
            stream = self.stream or sys.stderr
            try:
                stream.write("".join(lines))
                stream.flush()
            except (OSError, ValueError):  # stderr closed or broken: an access log never stops the server
                pass

    def close(self) -> None:
        """Stop the writer and write what waits (a later record starts a new writer)."""
        with self.lock:  # type: ignore[union-attr]
            writer, self.writer = self.writer, None
        if writer is not None:
            thread, stop = writer
            stop.set()
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self.flush()
        super().close()


def _record(created: float, msg: str, args: tuple) -> logging.LogRecord:
    """An INFO record of :data:`ACCESS_LOGGER` for ``logger.info(msg, *args)`` at ``created`` (as the logger's own
    for the message and the time; made in the writer thread, so thread and caller fields are the writer's)."""
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, msg, args, None)
    record.relativeCreated -= (record.created - created) * 1000  # made later than the event
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


class AccessLog:
    """One line per answered request on the :data:`ACCESS_LOGGER` logger, when ``on``; without a handler of
    the operator's, a :class:`BufferedStderr` is added. While that handler is the logger's only one and nothing
    else is configured (:meth:`_direct`), a line goes to it directly (:meth:`BufferedStderr.keep`): the event loop
    makes no record (the logging module's record and caller lookup showed in a profile of the gRPC event loop);
    otherwise through the logger."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.direct: BufferedStderr | None = None
        if on:
            if not self.log.handlers:
                handler = BufferedStderr()
                handler.setFormatter(logging.Formatter(ACCESS_FORMAT))
                self.log.addHandler(handler)
            only = self.log.handlers[0] if len(self.log.handlers) == 1 else None
            self.direct = only if isinstance(only, BufferedStderr) else None
            self.log.setLevel(logging.INFO)
            self.log.propagate = False

    def write(self, transport: str, method: str, code: str, seconds: float, peer: str, target: str) -> None:
        if not self.on:
            return
        args = (printable(peer, 64), transport, method, printable(target), code, seconds * 1000)
        if self._direct():
            self.direct.keep(time.time(), ACCESS_MESSAGE, args)  # type: ignore[union-attr]  # _direct checked it
        else:  # configured since (another handler, a level, a filter): the logging module decides
            self.log.info(ACCESS_MESSAGE, *args)

    def _direct(self) -> bool:
        """Whether a line may skip the logging module: what it would decide is known (only our handler, no filter,
        no propagation, INFO enabled on the logger and the handler)."""
        log, handler = self.log, self.direct
        return (handler is not None and len(log.handlers) == 1 and log.handlers[0] is handler and not log.filters
                and not handler.filters and not log.propagate and handler.level <= logging.INFO
                and log.isEnabledFor(logging.INFO))


class Metrics:
    """The series above in a registry of their own (several servers in one process do not mix)."""

    enabled = True  # GET /metrics is served
    per_request = True  # each request goes to :meth:`request` (the REST middleware is installed)

    def __init__(self, access_log: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.access = AccessLog(access_log)
        r = self.registry
        self.requests = Counter("fakegradient_requests", "answers by transport, v2 operation and status",
                                ["transport", "method", "code"], registry=r)
        self.latency = Histogram("fakegradient_request_duration_seconds", "time from request to answer",
                                 ["transport", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("fakegradient_rejected", "requests refused by a limit (busy, size, time)",
                                ["transport", "limit"], registry=r)
        self.batch_size = Histogram("fakegradient_batch_size", "images per ONNX Runtime run",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.runs = Gauge("fakegradient_runs_in_progress", "ONNX Runtime runs in progress", registry=r)
        self.inflight = Gauge("fakegradient_inflight_requests", "requests admitted and not yet answered",
                              registry=r)
        self.queue = Gauge("fakegradient_queue_depth", "admitted requests waiting for an ONNX Runtime runner "
                                                       "(or in a dynamic batcher's queue)", registry=r)
        self.uploads = Gauge("fakegradient_upload_bytes_held", "request bytes held, all requests together",
                             registry=r)

    def watch(self, inflight: Callable[[], float], queue: Callable[[], float], uploads: Callable[[], float]) -> None:
        """Read these gauges from the data plane at scrape time."""
        self.inflight.set_function(inflight)
        self.queue.set_function(queue)
        self.uploads.set_function(uploads)

    def counted(self, infer: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``infer`` (a model's run on a batch) observed: its batch size and runs in progress."""
        def run(batch: Any) -> Any:
            self.batch_size.observe(len(batch))
            with self.runs.track_inprogress():
                return infer(batch)
        return run

    def request(self, transport: str, method: str, code: str, seconds: float, peer: str = "-",
                target: str = "") -> None:
        """One answered request: counted, timed, and logged when the access log is on."""
        self.requests.labels(transport, method, code).inc()
        self.latency.labels(transport, method).observe(seconds)
        limit = LIMIT_OF.get(code)
        if limit is not None:
            self.rejected.labels(transport, limit).inc()
        self.access.write(transport, method, code, seconds, peer, target)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class NoMetrics:
    """Metrics off: :class:`Metrics`' interface with nothing counted; the access log still written if asked
    (then, and only then, the REST transport passes its requests here)."""

    enabled = False

    def __init__(self, access_log: bool = False) -> None:
        self.access = AccessLog(access_log)
        self.per_request = access_log

    def watch(self, inflight: Callable[[], float], queue: Callable[[], float], uploads: Callable[[], float]) -> None:
        pass

    def counted(self, infer: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return infer

    def request(self, transport: str, method: str, code: str, seconds: float, peer: str = "-",
                target: str = "") -> None:
        self.access.write(transport, method, code, seconds, peer, target)

    def exposition(self) -> tuple[bytes, str]:
        raise LookupError("metrics are off (serve --no-metrics): there is no /metrics")


def recorder(settings: Observability = Observability()) -> Metrics | NoMetrics:
    """What the data plane records into under ``settings``: :class:`Metrics`, or :class:`NoMetrics` when off."""
    return (Metrics if settings.metrics else NoMetrics)(settings.access_log)


class RequestMetrics:
    """ASGI middleware of the REST transport: each HTTP request's operation, status and time to
    :meth:`Metrics.request` (an exception that escapes the app counts as 500)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = ["500"]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else "-"
            self.metrics.request("rest", rest_method(scope["path"]), status[0], time.perf_counter() - start, peer,
                                 f"{scope['method']} {scope['path']}")
