"""``fakegradient serve``: the cloud side. Runs protected ONNX models; knows nothing of keys.

Open Inference Protocol v2 (KServe / Triton) over REST, served by FastAPI + uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .onnx_model import ServedModel, load_model_dir
from .protocol import HEADER_LENGTH, ProtocolError, build_infer_response, parse_infer_request


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 2**20  # 64 MiB: ~100 images of 3x224x224 FP32 as JSON
    max_batch: int = 64


def create_app(models: list[ServedModel], limits: Limits = Limits()) -> FastAPI:
    by_name = {m.name: m for m in models}
    app = FastAPI(title="fakegradient inference server", version=__version__, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def model_or_404(name: str) -> ServedModel | JSONResponse:
        return by_name.get(name) or error(404, f"unknown model {name!r}; served: {sorted(by_name)}")

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
        model = model_or_404(name)
        if isinstance(model, JSONResponse):
            return model
        return {
            "name": model.name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": model.input_shape}],
            "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": model.output_shape}],
            "parameters": model.parameters(),
        }

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str):
        model = model_or_404(name)
        return model if isinstance(model, JSONResponse) else {"name": name, "ready": True}

    @app.get("/v2/models/{name}/config")
    def model_config(name: str):
        """Triton's config endpoint, with the public parameters (fingerprint) as Triton would show them."""
        model = model_or_404(name)
        if isinstance(model, JSONResponse):
            return model
        return {"name": model.name, "platform": "onnxruntime_onnx", "max_batch_size": limits.max_batch,
                "parameters": {k: {"string_value": str(v)} for k, v in model.parameters().items()
                               if k == "fingerprint"}}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str = "1"):
        try:
            body = await _read_limited(request, limits.max_body_bytes)  # read first: errors reach the client
        except ProtocolError as exc:
            return error(exc.status, str(exc))
        model = model_or_404(name)
        if isinstance(model, JSONResponse):
            return model
        try:
            header = request.headers.get(HEADER_LENGTH)
            try:
                header_length = None if header is None else int(header)
            except ValueError:
                raise ProtocolError(400, f"{HEADER_LENGTH} must be an integer") from None
            parsed = parse_infer_request(body, header_length,
                                         {"name": model.input_name, "shape": model.input_shape}, limits.max_batch)
        except ProtocolError as exc:
            return error(exc.status, str(exc))
        logits = await anyio.to_thread.run_sync(model.infer, parsed.inputs[model.input_name])
        payload, headers = build_infer_response(model.name, {model.output_name: logits}, parsed.binary_outputs,
                                                parsed.request_id)
        media = "application/octet-stream" if parsed.binary_outputs else "application/json"
        return Response(payload, media_type=media, headers=headers)

    return app


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413. An oversized body is drained (up to 4x the limit, not stored) so that the
    client reads the 413 instead of a reset connection; beyond that the request is cut off."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 4 * limit:
        raise ProtocolError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 4 * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise ProtocolError(413, f"request body exceeds the limit of {limit} bytes")
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
