"""``fakegradient serve``: the cloud side. Runs protected ONNX models; knows nothing of keys.

Open Inference Protocol v2 (KServe / Triton) over REST, served by FastAPI + uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from .errors import ModelNotFound, PayloadTooLarge, ProtocolError
from .onnx_model import ServedModel, load_model_dir
from .protocol import HEADER_LENGTH, build_infer_response, parse_header_length, parse_infer_request


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 2**20  # 64 MiB: ~100 images of 3x224x224 FP32 as JSON
    max_batch: int = 64


def create_app(models: list[ServedModel], limits: Limits = Limits()) -> FastAPI:
    """The v2 REST app serving ``models``. Every error answers ``{"error": "<message>"}``."""
    by_name = {m.name: m for m in models}
    app = FastAPI(title="fakegradient inference server", version=__version__, docs_url=None, redoc_url=None)
    add_error_handlers(app)

    def lookup(name: str) -> ServedModel:
        """The served model ``name``, or 404."""
        if name not in by_name:
            raise ModelNotFound(f"unknown model {name!r}; served: {sorted(by_name)}")
        return by_name[name]

    @app.get("/v2/health/live")
    def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.get("/v2")
    def server_metadata():
        return {"name": "fakegradient", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.post("/v2/repository/index")
    def repository_index():
        return [{"name": name, "version": "1", "state": "READY"} for name in by_name]

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    def model_metadata(name: str, version: str = "1"):
        model = lookup(name)
        return {
            "name": model.name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": model.input_shape}],
            "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": model.output_shape}],
            "parameters": model.parameters(),
        }

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str):
        return {"name": lookup(name).name, "ready": True}

    @app.get("/v2/models/{name}/config")
    def model_config(name: str):
        """Triton's config endpoint, with the public parameters (fingerprint) as Triton would show them."""
        model = lookup(name)
        return {"name": model.name, "platform": "onnxruntime_onnx", "max_batch_size": limits.max_batch,
                "parameters": {k: {"string_value": str(v)} for k, v in model.parameters().items()
                               if k == "fingerprint"}}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1"):
        body = await _read_limited(request, limits.max_body_bytes)  # read first: errors reach the client
        model = lookup(name)
        parsed = parse_infer_request(body, parse_header_length(request.headers.get(HEADER_LENGTH)),
                                     {"name": model.input_name, "shape": model.input_shape}, limits.max_batch)
        logits = await anyio.to_thread.run_sync(model.infer, parsed.inputs[model.input_name])
        payload, headers = build_infer_response(model.name, {model.output_name: logits}, parsed.binary_outputs,
                                                parsed.request_id)
        media = "application/octet-stream" if parsed.binary_outputs else "application/json"
        return Response(payload, media_type=media, headers=headers)

    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body the server sends."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error, ours and FastAPI's own, as ``{"error": "<message>"}`` (what tritonclient reads)."""

    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return _error(exc.status, str(exc))

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


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413. An oversized body is drained (up to 4x the limit, not stored) so that the
    client reads the 413 instead of a reset connection; beyond that the request is cut off."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 4 * limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 4 * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


def serve(model_dirs: list[Path], host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          threads: int = 0) -> None:
    import uvicorn

    models = [load_model_dir(d, threads=threads) for d in model_dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        from ..errors import FakeGradientError

        raise FakeGradientError(f"two model folders share a name: {names}")
    app = create_app(models, limits)
    print(f"serving {', '.join(names)} on http://{host}:{port} (Open Inference Protocol v2)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
