"""The inference server's operations, whatever the transport (as KServe's ``DataPlane``): authentication, model
lookup, admission (requests in progress, request bytes held), dynamic batching, parse / run / answer, metadata.

Each method raises the typed errors of :mod:`.errors` (the transport maps them to its statuses). A transport
reads its requests (the REST server, :mod:`.server`, the body bytes, within its limits and the upload budget held
here) and encodes the answers: :meth:`DataPlane.infer` takes an :class:`InferRequest` and returns the output
arrays; :meth:`DataPlane.infer_body` does the v2 REST body codec (JSON or binary tensors) around it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np

from .. import __version__
from .auth import bearer_matches
from .batching import DynamicBatcher
from .errors import InvalidInput, ModelNotFound, ServerBusy, Unauthorized, UploadsBusy
from .metrics import Metrics, NoMetrics
from .onnx_model import ServedModel
from .protocol import (
    InferRequest,
    build_infer_response,
    check_input,
    check_outputs,
    check_values,
    parse_header_length,
    parse_infer_request,
)
from .settings import Access, Batching, Limits
from .triton import triton_parameters

JSON_GIL_BOUND_BYTES = 2**20  # JSON parsed over this size holds the GIL long: one such parse at a time
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class EncodedResponse:
    """An infer answer as the v2 REST body codec writes it."""

    body: bytes
    headers: dict[str, str]
    media_type: str


class UploadBudget:
    """Bytes of request bodies the server holds at once, all connections together, charged as they arrive (not
    as declared: a head declaring 64 MiB holds nothing until its bytes come). When full, a body within its fair
    share (``limit`` / bodies held) takes the room of the body still arriving that holds the most over its share,
    which is dropped (:meth:`BodyHold.evict`); so a few connections that stall holding much cannot lock others
    out. Event loop only: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self.holds: set[BodyHold] = set()  # those holding bytes

    def fair_share(self, hold: BodyHold) -> float:
        return self.limit / len(self.holds | {hold})

    def busy(self) -> UploadsBusy:
        return UploadsBusy(f"the server holds {self.held} bytes of request bodies (the limit is {self.limit}); "
                           "retry later")


class BodyHold:
    """One request's body and its share of the :class:`UploadBudget`: grows as chunks arrive, released when the
    answer is built; evicted (data dropped, :class:`UploadsBusy` at its next chunk) for a body within its share."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget, self.held = budget, 0
        self.chunks: list[bytes] = []
        self.arriving = True  # false once the body is whole (then evicting it would free nothing)
        self.evicted = False

    def add(self, chunk: bytes) -> None:
        """Store ``chunk``; :class:`UploadsBusy` (503, connection closed) if the budget has no room for it."""
        self.grow_to(self.held + len(chunk))
        self.chunks.append(chunk)

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all, making room by evicting a body over its fair share if this one is within
        its own; :class:`UploadsBusy` otherwise."""
        budget, extra = self.budget, size - self.held
        if self.evicted:
            raise budget.busy()
        if extra <= 0:
            return
        while budget.held + extra > budget.limit:
            share = budget.fair_share(self)
            over = [h for h in budget.holds if h is not self and h.arriving and h.held > share]
            if size > share or not over:
                raise budget.busy()
            max(over, key=lambda h: h.held).evict()
        budget.held += extra
        budget.holds.add(self)
        self.held = size

    def body(self) -> bytes:
        """The whole body (it stays held until :meth:`release`)."""
        self.arriving = False
        data = b"".join(self.chunks)
        self.chunks = [data]
        return data

    def evict(self) -> None:
        self.release()
        self.evicted = True

    def release(self) -> None:
        self.budget.held -= self.held
        self.budget.holds.discard(self)
        self.held = 0
        self.chunks = []


class DataPlane:
    """The operations on ``models`` under ``limits``, ``access`` and ``batching``, recorded in ``metrics``
    (default: :class:`Metrics` without access log; :class:`NoMetrics` records nothing). Async methods run on the
    server's event loop; parsing, inference and encoding go to threads, so the loop stays responsive."""

    def __init__(self, models: list[ServedModel], limits: Limits = Limits(), access: Access = Access(),
                 batching: Batching = Batching(), metrics: Metrics | NoMetrics | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.limits, self.access, self.batching = limits, access, batching
        self.metrics = metrics or Metrics()  # both transports record their requests here (NoMetrics: off)
        self.runners = asyncio.Semaphore(limits.max_runs)  # ONNX Runtime runs at once, batched or not
        self.batchers = ({m.name: DynamicBatcher(self.metrics.counted(m.infer), batching, self.runners)
                          for m in models} if batching.enabled else {})
        self.gil_bound = anyio.CapacityLimiter(1)  # big JSON work holds the GIL: one at a time, the loop between
        self.uploads = UploadBudget(limits.max_buffered_bytes)
        self.inflight = 0
        self.waiting = 0  # requests waiting for a runner (unbatched; a batcher's queue is its own)
        self.metrics.watch(lambda: self.inflight,
                           lambda: self.waiting + sum(len(b.pending) for b in self.batchers.values()),
                           lambda: self.uploads.held)

    def close(self) -> None:
        """Cancel the batchers' work (server shutdown)."""
        for batcher in self.batchers.values():
            batcher.close()

    # --- who, which model ---------------------------------------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """:class:`Unauthorized` unless ``authorization`` (the ``Authorization`` header, or the transport's
        equivalent) carries the token, when the server has one."""
        if self.access.token is None:
            return
        if not bearer_matches(authorization, self.access.token):
            raise Unauthorized("a bearer token is needed (Authorization: Bearer <token>)" if authorization is None
                               else "invalid bearer token")

    def model(self, name: str, version: str = "1") -> ServedModel:
        """The served model ``name`` (version 1: the only one), or :class:`ModelNotFound`."""
        if name not in self.models:
            raise ModelNotFound(f"unknown model {name!r}; served: {sorted(self.models)}")
        if version != "1":
            raise ModelNotFound(f"model {name!r} has no version {version!r}; its only version is '1'")
        return self.models[name]

    # --- health and metadata ------------------------------------------------------------------------------

    def live(self) -> dict[str, bool]:
        return {"live": True}

    def ready(self) -> dict[str, bool]:
        return {"ready": True}  # every model is loaded before the server starts

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "fakegradient", "version": __version__, "extensions": ["binary_tensor_data"]}

    def repository_index(self) -> list[dict[str, str]]:
        return [{"name": name, "version": "1", "state": "READY"} for name in self.models]

    def model_ready(self, name: str, version: str = "1") -> dict[str, Any]:
        return {"name": self.model(name, version).name, "ready": True}

    def model_metadata(self, name: str, version: str = "1") -> dict[str, Any]:
        """The v2 model metadata, with the parameters :class:`Access` publishes (minimal or full)."""
        model = self.model(name, version)
        return {
            "name": model.name, "versions": ["1"], "platform": PLATFORM,
            "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": model.input_shape}],
            "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": model.output_shape}],
            "parameters": self.access.public(model.parameters()),
        }

    def model_config(self, name: str) -> dict[str, Any]:
        """Triton's model configuration, with the public parameters as Triton shows them (JSON-encoded strings,
        as ``export-triton`` writes them into config.pbtxt)."""
        model = self.model(name)
        return {"name": model.name, "platform": PLATFORM, "max_batch_size": self.limits.max_batch,
                "parameters": triton_parameters(self.access.public(model.parameters()))}

    # --- admission ----------------------------------------------------------------------------------------

    def hold(self) -> BodyHold:
        """A request's share of the upload budget (release it when its answer is built)."""
        return BodyHold(self.uploads)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """One request in progress; :class:`ServerBusy` (503 + Retry-After) beyond ``max_inflight``."""
        if self.inflight >= self.limits.max_inflight:
            raise ServerBusy(f"{self.inflight} requests in progress (the limit); retry later")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    # --- inference ----------------------------------------------------------------------------------------

    def input_spec(self, model: ServedModel) -> dict[str, Any]:
        """What a request's input must be: {name, shape (-1: the batch)}."""
        return {"name": model.input_name, "shape": model.input_shape}

    async def infer(self, name: str, request: InferRequest, version: str = "1") -> dict[str, np.ndarray]:
        """The model's outputs {name: (B, ...) FP32} for a parsed ``request`` (admitted here)."""
        model = self.model(name, version)
        self._check(model, request)
        with self.admit():
            return await self._run(model, request)

    def _check(self, model: ServedModel, request: InferRequest) -> None:
        """The checks :func:`parse_infer_request` makes, on a request another transport decoded."""
        if len(request.inputs) != 1:
            raise InvalidInput(f"the model takes exactly one input, got {len(request.inputs)}")
        for name, array in request.inputs.items():
            datatype = "FP32" if array.dtype == np.float32 else str(array.dtype)
            check_input(name, datatype, list(array.shape), self.input_spec(model), self.limits.max_batch)
            check_values(array)

    async def infer_body(self, name: str, body: bytes, header_length: str | None,
                         version: str = "1") -> EncodedResponse:
        """Parse a v2 REST body (JSON, or JSON + binary tensors after ``header_length`` bytes), run it, encode
        the answer the way it asks (JSON or binary outputs)."""
        model = self.model(name, version)
        length = parse_header_length(header_length)
        with self.admit():
            big_json = (len(body) if length is None else length) > JSON_GIL_BOUND_BYTES
            parsed = await anyio.to_thread.run_sync(
                parse_infer_request, body, length, self.input_spec(model), self.limits.max_batch,
                limiter=self.gil_bound if big_json else None)
            outputs = await self._run(model, parsed)
            payload, headers = await anyio.to_thread.run_sync(
                build_infer_response, model.name, outputs, parsed.binary_outputs, parsed.request_id,
                limiter=None if parsed.binary_outputs else self.gil_bound)
        media = "application/octet-stream" if parsed.binary_outputs else "application/json"
        return EncodedResponse(payload, headers, media)

    async def _run(self, model: ServedModel, request: InferRequest) -> dict[str, np.ndarray]:
        check_outputs(request.outputs, [model.output_name])
        batch = request.inputs[model.input_name]
        if model.name in self.batchers:
            logits = await self.batchers[model.name].submit(batch)
        else:
            self.waiting += 1
            try:
                await self.runners.acquire()
            finally:
                self.waiting -= 1
            try:
                logits = await anyio.to_thread.run_sync(self.metrics.counted(model.infer), batch)
            finally:
                self.runners.release()
        return {model.output_name: logits}
