"""serving/metrics.py: ``GET /metrics`` shows the requests just made through REST and gRPC (one data plane),
the limits' refusals, ONNX Runtime runs and their batch sizes; the access log has one line per request, with
no payload and no token; with metrics off both transports serve, nothing is counted and /metrics is a 404."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_server_support import (
    INPUT_SHAPE,
    request,
    running_server,
    running_transports,
    tiny_models,
    tiny_request,
)

from fakegradient.serving.dataplane import DataPlane
from fakegradient.serving.metrics import (
    ACCESS_FORMAT,
    ACCESS_LOGGER,
    AccessLog,
    BufferedStderr,
    Metrics,
    RequestMetrics,
    printable,
    recorder,
    rest_method,
)
from fakegradient.serving.protocol import InferRequest
from fakegradient.serving.server import build_server, rest_app
from fakegradient.serving.settings import Access, Batching, Limits, Observability

TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
X = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, *INPUT_SHAPE)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("metrics"))


def scrape(address: tuple[str, int], headers: dict[str, str] | None = AUTH) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of GET /metrics."""
    status, response_headers, body = request(address, "GET", "/metrics", headers=headers)
    assert status == 200 and response_headers["content-type"].startswith("text/plain"), (status, body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Any:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Lines()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_metrics_show_the_requests_of_both_transports(models, access_lines):
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    from fakegradient.serving import open_inference_pb2 as pb

    plane = DataPlane(models, Limits(max_batch=2), Access(token=TOKEN), Batching(), Metrics(access_log=True))
    with running_transports(plane) as (rest, grpc_address):
        host, port = rest.split(":")
        address = (host, int(port))
        for _ in range(3):
            assert request(address, "POST", "/v2/models/tiny/infer", tiny_request(X), AUTH)[0] == 200
        assert request(address, "POST", "/v2/models/tiny/infer", tiny_request(X[:, :2]), AUTH)[0] == 400
        assert request(address, "POST", "/v2/models/tiny/infer", tiny_request(np.concatenate([X, X])),
                       AUTH)[0] == 413  # batch of 4 over the limit of 2
        assert request(address, "GET", "/v2/models/tiny", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(address, "GET", "/v2/health/ready")[0] == 200
        with grpc.insecure_channel(grpc_address) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            message = pb.ModelInferRequest(model_name="tiny")
            message.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
            message.raw_input_contents.append(X.tobytes())
            infer(message, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            with pytest.raises(grpc.RpcError):
                infer(message, timeout=10)  # no token
        assert request(address, "GET", "/metrics")[0] == 401  # the token guards the counts too
        samples = scrape(address)

    def requests(transport: str, method: str, code: str) -> float:
        return value(samples, "fakegradient_requests_total", transport=transport, method=method, code=code)

    assert requests("rest", "ModelInfer", "200") == 3 and requests("rest", "ModelInfer", "400") == 1
    assert requests("rest", "ModelInfer", "413") == 1 and requests("rest", "ModelMetadata", "401") == 1
    assert requests("rest", "ServerReady", "200") == 1 and requests("rest", "Metrics", "401") == 1
    assert requests("grpc", "ModelInfer", "OK") == 1 and requests("grpc", "ModelInfer", "UNAUTHENTICATED") == 1
    assert value(samples, "fakegradient_request_duration_seconds_count", transport="rest", method="ModelInfer") == 5
    assert value(samples, "fakegradient_rejected_total", transport="rest", limit="size") == 1
    # ONNX Runtime ran the 3 REST and the 1 gRPC good requests, 2 images each
    assert value(samples, "fakegradient_batch_size_count") == 4 and value(samples, "fakegradient_batch_size_sum") == 8
    for gauge in ("fakegradient_inflight_requests", "fakegradient_queue_depth", "fakegradient_upload_bytes_held",
                  "fakegradient_runs_in_progress"):
        assert (gauge, ()) in samples and samples[(gauge, ())] == 0  # nothing in progress now

    # the access log: one line per request (the scrape's own line comes after its answer was built)
    assert len(access_lines) == 11, access_lines
    assert any(" rest ModelInfer POST /v2/models/tiny/infer 413 " in line for line in access_lines)
    assert any(" grpc ModelInfer ModelInfer tiny UNAUTHENTICATED " in line for line in access_lines)
    assert not any(TOKEN in line or "wrong" in line for line in access_lines)


def test_batched_runs_are_counted_with_their_size(models):
    plane = DataPlane(models, Limits(), Access(), Batching(enabled=True, max_rows=8, max_delay=0.05))

    async def three_at_once() -> None:
        await asyncio.gather(*(plane.infer("tiny", InferRequest({"input": X}, True, None)) for _ in range(3)))
        plane.close()

    asyncio.run(three_at_once())
    histogram = {s.name: s.value for f in text_string_to_metric_families(plane.metrics.exposition()[0].decode())
                 for s in f.samples if s.name.startswith("fakegradient_batch_size")}
    assert histogram["fakegradient_batch_size_sum"] == 6  # every image counted once, in 1 to 3 runs
    assert 1 <= histogram["fakegradient_batch_size_count"] <= 3


def test_access_log_is_off_by_default(models, access_lines):
    with running_server(models, Limits()) as address:
        assert request(address, "POST", "/v2/models/tiny/infer", tiny_request(X))[0] == 200
        samples = scrape(address, headers=None)  # no token configured: /metrics is open, as every endpoint
    assert value(samples, "fakegradient_requests_total", transport="rest", method="ModelInfer", code="200") == 1
    assert access_lines == []


def grpc_infer(address: str, x: np.ndarray) -> np.ndarray:
    """The tiny model's logits for ``x`` through gRPC ModelInfer (raw tensor bytes)."""
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    from fakegradient.serving import open_inference_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        message = pb.ModelInferRequest(model_name="tiny")
        message.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        message.raw_input_contents.append(x.tobytes())
        answer = infer(message, timeout=10)
    return np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(len(x), -1)


@pytest.mark.parametrize("access_log", [False, True])
def test_metrics_off_serve_both_transports_and_count_nothing(models, access_lines, access_log):
    pytest.importorskip("grpc", reason="grpcio is not installed")
    plane = DataPlane(models, Limits(max_batch=2), metrics=recorder(Observability(metrics=False,
                                                                                   access_log=access_log)))
    assert not hasattr(plane.metrics, "registry") and plane.metrics.counted(models[0].infer) == models[0].infer
    middleware = [m.cls for m in rest_app(plane).user_middleware]
    assert (RequestMetrics in middleware) == access_log  # installed only to write the access log
    expected = models[0].infer(X)
    with running_transports(plane) as (rest, grpc_address):
        host, port = rest.split(":")
        address = (host, int(port))
        status, _, body = request(address, "POST", "/v2/models/tiny/infer", tiny_request(X))
        assert status == 200
        assert np.allclose(np.array(json.loads(body)["outputs"][0]["data"]).reshape(expected.shape),
                           expected, atol=1e-6)
        assert np.allclose(grpc_infer(grpc_address, X), expected, atol=1e-6)
        status, _, body = request(address, "GET", "/metrics")
        assert status == 404 and b"error" in body, (status, body)
    if access_log:  # REST infer, gRPC infer, the 404: one line each
        assert len(access_lines) == 3, access_lines
        assert any(" grpc ModelInfer ModelInfer tiny OK " in line for line in access_lines)
        assert any(" rest Metrics GET /metrics 404 " in line for line in access_lines)
    else:
        assert access_lines == []


def test_metrics_are_on_by_default_and_recorder_follows_the_setting():
    assert recorder().enabled and isinstance(recorder(), Metrics) and not recorder().access.on
    on_with_log = recorder(Observability(access_log=True))
    assert on_with_log.enabled and on_with_log.access.on and on_with_log.per_request
    off = recorder(Observability(metrics=False))
    assert not off.enabled and not off.per_request and not off.access.on


def test_labels_are_bounded_and_log_lines_single():
    assert rest_method("/v2/models/x/versions/1/infer") == "ModelInfer"
    assert rest_method("/v2/models/x/config") == "ModelConfig" and rest_method("/v2") == "ServerMetadata"
    assert rest_method("/anything/else") == "other"  # unknown paths share one label value
    assert printable("a\nb\x1b[31m") == "a\\nb\\x1b[31m" and len(printable("x" * 999)) == 203


def test_the_default_access_log_writes_every_line_to_stderr_by_exit():
    """Without a handler of the operator's, lines are kept and written by a thread of their own (off the event
    loop); the ones still waiting are written when the process exits."""
    script = ("from fakegradient.serving.metrics import AccessLog\n"
              "log = AccessLog(True)\n"
              "for i in range(200):\n"
              "    log.write('grpc', 'infer', 'OK', 0.001, 'peer', f'model{i}')\n")
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 0 and len(lines) == 200
    assert lines[-1].endswith("peer grpc infer model199 OK 1.0ms")


@contextlib.contextmanager
def only_access_handler(handler: logging.Handler) -> Iterator[logging.Logger]:
    """The access logger with ``handler`` as its only handler for the block; afterwards ``handler`` closed and the
    logger as it was: its own handlers, level and filters, and logging's ``disable`` level."""
    logger = logging.getLogger(ACCESS_LOGGER)
    others, level, filters = logger.handlers[:], logger.level, logger.filters[:]
    disabled = logging.root.manager.disable
    for other in others:
        logger.removeHandler(other)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logging.disable(disabled)
        logger.filters[:] = filters
        logger.setLevel(level)
        logger.removeHandler(handler)
        handler.close()
        for other in others:
            logger.addHandler(other)


def test_a_line_kept_directly_reads_as_one_through_the_logger():
    """While the access log's handler is the logger's only one, a line skips the logging module (no record on the
    event loop); the writer makes the record the logger would have made: the same text, time and format. A handler
    added later (an operator's) gets the lines through the logger again."""
    stream = io.StringIO()
    handler = BufferedStderr(stream, interval=3600)
    handler.setFormatter(logging.Formatter(ACCESS_FORMAT))
    extra = Lines()
    with only_access_handler(handler) as logger:
        log = AccessLog(True)
        assert log.direct is handler
        log.write("grpc", "ModelInfer", "OK", 0.0123, "ipv4:127.0.0.1:1\n", "ModelInfer tiny")
        assert handler.pending[0][0] is None  # kept without a record
        logger.addHandler(extra)
        try:
            log.write("rest", "ModelInfer", "200", 0.5, "peer", "/v2/models/tiny/infer")
        finally:
            logger.removeHandler(extra)
        assert handler.pending[1][0] is not None  # through the logger: a record, and the other handler has it
        assert extra.lines == ["peer rest ModelInfer /v2/models/tiny/infer 200 500.0ms"]
        handler.flush()
        direct, logged = stream.getvalue().splitlines()
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "  # logging's default asctime
        assert re.fullmatch(stamp + r"ipv4:127\.0\.0\.1:1\\n grpc ModelInfer ModelInfer tiny OK 12\.3ms", direct)
        assert re.fullmatch(stamp + r"peer rest ModelInfer /v2/models/tiny/infer 200 500\.0ms", logged)


SILENCING = {
    "logger level": lambda logger, handler: logger.setLevel(logging.WARNING),
    "handler level": lambda logger, handler: handler.setLevel(logging.WARNING),
    "logger filter": lambda logger, handler: logger.addFilter(lambda record: False),
    "handler filter": lambda logger, handler: handler.addFilter(lambda record: False),
    "logging.disable": lambda logger, handler: logging.disable(logging.INFO),
}


@pytest.mark.parametrize("silence", sorted(SILENCING))
def test_what_silences_the_access_log_still_does(silence):
    """Whatever an operator configures after the start that the logging module would act on takes the line
    through the logger again: a level or filter that drops it drops it."""
    stream = io.StringIO()
    handler = BufferedStderr(stream, interval=3600)
    with only_access_handler(handler) as logger:
        log = AccessLog(True)
        assert log._direct()
        SILENCING[silence](logger, handler)
        assert not log._direct()
        log.write("grpc", "ModelInfer", "OK", 0.01, "peer", "tiny")
        handler.flush()
        assert stream.getvalue() == ""


def test_flush_never_waits_for_the_handlers_lock():
    """logging.shutdown (run by logging.config, so by uvicorn's start) holds the handler's lock while it calls
    flush; a writer that waited for that lock inside flush deadlocked with it."""
    stream = io.StringIO()
    handler = BufferedStderr(stream, interval=3600)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.LogRecord("x", logging.INFO, __file__, 0, "kept", None, None))
    with handler.lock:  # as logging.shutdown holds it
        writer = threading.Thread(target=handler.flush)
        writer.start()
        writer.join(timeout=60)
        assert not writer.is_alive()  # it wrote without the lock
    handler.close()
    assert stream.getvalue() == "kept\n"


def test_a_failing_formatter_does_not_stop_the_writer(capsys):
    """An operator's formatter that raises: logging's usual report for that line, the others written."""
    stream = io.StringIO()
    handler = BufferedStderr(stream, interval=3600)

    class Picky(logging.Formatter):
        def format(self, record):
            if "bad" in record.getMessage():
                raise ValueError("cannot format")
            return record.getMessage()

    handler.setFormatter(Picky())
    for text in ("good 1", "bad", "good 2"):
        handler.handle(logging.LogRecord("x", logging.INFO, __file__, 0, text, None, None))
    handler.flush()
    handler.close()
    assert stream.getvalue().splitlines() == ["good 1", "good 2"]
    assert "cannot format" in capsys.readouterr().err


def test_buffered_lines_wait_for_the_writer_in_order_and_bounded():
    stream = io.StringIO()
    handler = BufferedStderr(stream, interval=3600, capacity=3)  # the writer thread never wakes by itself here
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("fakegradient.tests.buffered")
    logger.propagate = False
    logger.addHandler(handler)
    for i in range(5):
        logger.warning("line %d", i)
    assert stream.getvalue() == ""  # the emitting thread only kept the records
    handler.flush()
    assert stream.getvalue().splitlines() == ["line 0", "line 1", "line 2",
                                              "2 access-log lines dropped: more than 3 waited to be written"]
    logger.warning("line 5")
    thread, _ = handler.writer
    logger.removeHandler(handler)
    handler.close()  # writes what is left and stops the writer
    assert stream.getvalue().splitlines()[-1] == "line 5" and not thread.is_alive() and handler.writer is None


def test_the_access_log_survives_uvicorns_logging_configuration(models):
    """uvicorn's start runs logging.config.dictConfig, which closes every handler it finds: the access log's
    writer must start again with the next line (a writer started once stopped there, and a served access log stayed
    empty)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    others = logger.handlers[:]
    for other in others:  # no handler of an operator's: the access log adds its own
        logger.removeHandler(other)
    plane = DataPlane(models, Limits(), metrics=Metrics(access_log=True))
    handler = logger.handlers[0]
    assert isinstance(handler, BufferedStderr)
    try:
        plane.metrics.request("rest", "ModelInfer", "200", 0.01, "peer", "before")
        build_server(models, plane=plane)  # uvicorn.Config: logging configured, our handler closed
        assert handler.writer is None
        plane.metrics.request("rest", "ModelInfer", "200", 0.01, "peer", "after")
        assert handler.writer is not None and handler.writer[0].is_alive()
    finally:
        logger.removeHandler(handler)
        handler.close()
        for other in others:
            logger.addHandler(other)
