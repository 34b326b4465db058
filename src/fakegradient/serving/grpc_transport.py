"""The gRPC transport of the Open Inference Protocol v2 (``fakegradient serve --grpc-port``), on the same
:class:`~.dataplane.DataPlane` as the REST server: the same models, limits, batching, bearer token and public
metadata, in the same event loop.

Methods, under Triton's / KServe's wire name ``/inference.GRPCInferenceService/<Method>``: ServerLive,
ServerReady (no token needed, as REST's health), ServerMetadata, ModelReady, ModelMetadata, ModelConfig (where
the public parameters are, as Triton publishes them), RepositoryIndex and ModelInfer (FP32 tensors as
``raw_input_contents`` / ``raw_output_contents``, or ``contents.fp32_contents``). The token travels as the
``authorization: Bearer <token>`` metadata entry. Typed errors become status codes (:data:`STATUS`); nothing the
client sends yields INTERNAL.

Bounds: a message over the model's largest binary batch (at most ``--max-body-mb``) is refused by gRPC itself
(RESOURCE_EXHAUSTED); at most ``--max-inflight`` calls at once (RESOURCE_EXHAUSTED beyond, from gRPC), each
request message counted in the shared upload budget once received (UNAVAILABLE beyond); idle connections close
after ``--keep-alive``. gRPC receives a message whole before the data plane sees it: its memory is bounded by
calls x message size, not by the upload budget alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ..errors import FakeGradientError
from . import open_inference_pb2 as pb
from .dataplane import DataPlane
from .errors import (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    Unauthorized,
)
from .metrics import Metrics, NoMetrics
from .onnx_model import ServedModel
from .protocol import InferRequest, check_input

SERVICE = "inference.GRPCInferenceService"  # the wire name tritonclient and KServe's clients call
STATUS = {InvalidInput: grpc.StatusCode.INVALID_ARGUMENT, ModelNotFound: grpc.StatusCode.NOT_FOUND,
          PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED, RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
          ServerBusy: grpc.StatusCode.UNAVAILABLE, Unauthorized: grpc.StatusCode.UNAUTHENTICATED}
MESSAGE_SLACK_BYTES = 64 * 2**10  # a request's fields around its tensor bytes
STOP_GRACE_S = 5.0
log = logging.getLogger("fakegradient.serving.grpc")


def status_of(exc: ProtocolError) -> grpc.StatusCode:
    """The gRPC status of a data-plane error (its closest class in :data:`STATUS`)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INVALID_ARGUMENT


class Undecodable:
    """A request whose bytes are not the method's message (answered INVALID_ARGUMENT, not gRPC's INTERNAL)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _decoder(message: type) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"malformed {message.__name__}: {exc}")
    return decode


# --- the messages <-> the data plane's values ----------------------------------------------------------------


def decode_infer_request(request: Any, model: ServedModel, max_batch: int) -> InferRequest:
    """A ModelInferRequest as the data plane's :class:`InferRequest`; InvalidInput / PayloadTooLarge as REST."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"the model takes exactly one input, got {len(request.inputs)}")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    count = check_input(tensor.name, tensor.datatype, shape, {"name": model.input_name, "shape": model.input_shape},
                        max_batch)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        raw = request.raw_input_contents[0]
        if len(raw) != 4 * count:
            raise InvalidInput(f"raw_input_contents of {len(raw)} bytes does not hold {count} FP32 values")
        array = np.frombuffer(raw, dtype="<f4").reshape(shape)
    elif len(tensor.contents.fp32_contents) == count:
        array = np.asarray(tensor.contents.fp32_contents, dtype=np.float32).reshape(shape)
    else:
        raise InvalidInput(f"the input needs {count} FP32 values in raw_input_contents or contents.fp32_contents, "
                           f"got {len(tensor.contents.fp32_contents)}")
    return InferRequest({model.input_name: array}, True, request.id or None, tuple(o.name for o in request.outputs))


def encode_infer_response(model: ServedModel, outputs: dict[str, np.ndarray], request_id: str) -> Any:
    """The data plane's outputs as a ModelInferResponse, tensors as raw_output_contents (as Triton answers)."""
    response = pb.ModelInferResponse(model_name=model.name, model_version="1", id=request_id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype="FP32", shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return response


def model_config(plane: DataPlane, name: str) -> Any:
    """Triton's ModelConfig of model ``name``: batch limit, tensors (batch dimension implicit), public
    parameters (the data plane's, JSON-encoded strings as in config.pbtxt)."""
    config, model = plane.model_config(name), plane.model(name)
    message = pb.ModelConfig(name=config["name"], platform=config["platform"],
                             max_batch_size=config["max_batch_size"])
    message.input.add(name=model.input_name, data_type=pb.TYPE_FP32, dims=model.input_shape[1:])
    message.output.add(name=model.output_name, data_type=pb.TYPE_FP32, dims=model.output_shape[1:])
    for key, value in config["parameters"].items():
        message.parameters[key].string_value = value["string_value"]
    return message


# --- the service ---------------------------------------------------------------------------------------------


class Servicer:
    """Each method: authorize (health excepted), ask the data plane, answer its message."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        values = [v for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
        self.plane.authorize(values[0] if values else None)

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(**self.plane.live())

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(**self.plane.ready())

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    async def repository_index(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)
        return pb.RepositoryIndexResponse(models=self.plane.repository_index())

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or "1")["ready"])

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)
        meta = self.plane.model_metadata(request.name, request.version or "1")
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=meta["inputs"], outputs=meta["outputs"])

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)
        self.plane.model(request.name, request.version or "1")
        return pb.ModelConfigResponse(config=model_config(self.plane, request.name))

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.authorize(context)  # before anything else: strangers learn nothing
        version = request.model_version or "1"
        model = self.plane.model(request.model_name, version)
        hold = self.plane.hold()
        try:  # the message counts against the shared upload budget until its answer is built
            hold.grow_to(request.ByteSize())
            hold.arriving = False  # received whole: evicting it would free no memory
            parsed = decode_infer_request(request, model, self.plane.limits.max_batch)
            outputs = await self.plane.infer(model.name, parsed, version)
        finally:
            hold.release()
        return encode_infer_response(model, outputs, request.id)


METHODS = {  # wire name: (servicer method, request message, response message)
    "ServerLive": ("server_live", pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": ("server_ready", pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ServerMetadata": ("server_metadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "RepositoryIndex": ("repository_index", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "ModelReady": ("model_ready", pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ModelMetadata": ("model_metadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelConfig": ("model_config", pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelInfer": ("model_infer", pb.ModelInferRequest, pb.ModelInferResponse),
}


def _answering(method: Callable[[Any, Any], Awaitable[Any]], wire: str,
               metrics: Metrics | NoMetrics) -> Callable[[Any, Any], Awaitable[Any]]:
    """``method`` with the data plane's errors as gRPC statuses (a bug answers INTERNAL, its traceback
    logged), each call counted and timed in ``metrics`` and access-logged, where each is on."""
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if isinstance(request, Undecodable):
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, request.error)
            try:
                return await method(request, context)
            except ProtocolError as exc:
                code, message = status_of(exc), str(exc)
            except Exception:
                log.exception("gRPC %s failed", wire)
                code, message = grpc.StatusCode.INTERNAL, "internal server error"
            await context.abort(code, message)
        finally:
            if metrics.per_request:  # metrics or the access log on
                name = getattr(request, "model_name", None) or getattr(request, "name", "")
                metrics.request("grpc", wire, code.name, time.perf_counter() - start, context.peer() or "-",
                                f"{wire} {name}".strip())
    return handle


def handler(plane: DataPlane) -> grpc.GenericRpcHandler:
    """The service's methods on ``plane``, for ``server.add_generic_rpc_handlers``."""
    servicer = Servicer(plane)
    return grpc.method_handlers_generic_handler(SERVICE, {
        wire: grpc.unary_unary_rpc_method_handler(_answering(getattr(servicer, name), wire, plane.metrics),
                                                  request_deserializer=_decoder(request),
                                                  response_serializer=response.SerializeToString)
        for wire, (name, request, response) in METHODS.items()})


def max_message_bytes(plane: DataPlane) -> int:
    """The largest request message accepted: the largest model's largest batch as raw FP32 bytes plus
    :data:`MESSAGE_SLACK_BYTES`, at most the REST body limit."""
    largest = max(math.prod(m.input_shape[1:]) for m in plane.models.values()) * 4 * plane.limits.max_batch
    return min(plane.limits.max_body_bytes, largest + MESSAGE_SLACK_BYTES)


def free_port(host: str, port: int) -> int:
    """``port`` (0: a free one) if ``host:port`` can be listened on; else a one-line error (port in use,
    unknown host), instead of gRPC's own log lines."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family) as probe:
            return probe.getsockname()[1]
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FakeGradientError(f"cannot listen for gRPC on {host}:{port}: {reason}") from None


async def start(plane: DataPlane, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server for ``plane`` on ``host:port`` (0: any free port); (server, port bound)."""
    port = free_port(host, port)
    limits = plane.limits
    size = max_message_bytes(plane)
    server = grpc.aio.server(maximum_concurrent_rpcs=limits.max_inflight, options=[
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", limits.max_body_bytes),
        ("grpc.max_concurrent_streams", limits.max_inflight),
        ("grpc.max_connection_idle_ms", int(limits.keep_alive * 1000)),
        ("grpc.max_metadata_size", limits.max_head_bytes),
    ])
    server.add_generic_rpc_handlers((handler(plane),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, reason = 0, exc
    else:
        reason = "address in use or not available"
    if not bound:
        raise FakeGradientError(f"cannot listen for gRPC on {address}: {reason}")
    await server.start()
    return server, bound


async def serve_both(rest: Any, sockets: list[Any], plane: DataPlane, host: str, port: int,
                     started: Callable[[int], None] | None = None) -> None:
    """Run the REST server ``rest`` (a ``uvicorn.Server``) on ``sockets`` and the gRPC server on
    ``host:port``, both on ``plane`` in this event loop, until the REST server exits (signal or
    ``rest.should_exit``); ``started(grpc_port)`` once gRPC listens."""
    grpc_server, bound = await start(plane, host, port)
    if started is not None:
        started(bound)
    try:
        await rest.serve(sockets=sockets)
    finally:
        await grpc_server.stop(STOP_GRACE_S)


def run_with_grpc(rest: Any, sockets: list[Any], plane: DataPlane, host: str, port: int) -> None:
    """:func:`serve_both` in a new event loop (the one ``rest`` would run in), announcing the gRPC address."""
    def announce(bound: int) -> None:
        print(f"gRPC on {host}:{bound} (Open Inference Protocol v2, {SERVICE})", flush=True)

    loop_factory = rest.config.get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_both(rest, sockets, plane, host, port, announce))
