"""A KServe custom predictor: the protected ONNX model served by ``kserve.ModelServer`` (Open Inference Protocol
v2, REST and gRPC), for clusters that run KServe rather than ``fakegradient serve``.

    python -m fakegradient.serving.kserve_model --model_dir /mnt/models --model_name mnv2 [--http_port 8080]

KServe's v2 model metadata has no ``parameters``, so the fingerprint and the preprocessing the device client
needs are published where Triton publishes them, ``GET /v2/models/<name>/config`` (a route added to KServe's
FastAPI app); class names are not. KServe has no bearer token and none of ``fakegradient serve``'s limits
(body size, in-flight work, batching): in a cluster the ingress or mesh gives them. Needs ``pip install kserve``.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_model import RuntimeOptions, ServedModel, load_model_dir
from .triton import TRITON_PARAMETERS, triton_parameters

DEFAULT_MAX_BATCH = 64


def _kserve() -> Any:
    try:
        import kserve
    except ImportError:
        from ..errors import FakeGradientError

        raise FakeGradientError("the KServe predictor needs the kserve package: pip install kserve") from None
    return kserve


def public_config(model: ServedModel, max_batch: int) -> dict[str, Any]:
    """Triton's model config subset the device client reads: the batch limit and the minimal public
    parameters (fingerprint, preprocessing; never class names, never a key)."""
    published = {k: v for k, v in model.parameters().items() if k in TRITON_PARAMETERS}
    return {"name": model.name, "max_batch_size": max_batch, "parameters": triton_parameters(published)}


def make_model(model_dir: Path, name: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
               runtime: RuntimeOptions | None = None) -> Any:
    """A loaded ``kserve.Model`` serving ``model_dir/model.onnx`` (checked as ``fakegradient serve`` checks it)."""
    kserve = _kserve()
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    served = load_model_dir(Path(model_dir), name, runtime or RuntimeOptions())  # fingerprint, digest, no key in the folder

    class FakeGradientModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(served.name)
            self.served = served
            self.max_batch = max_batch
            self.ready = True

        def get_input_types(self) -> list[dict[str, Any]]:
            return [{"name": served.input_name, "datatype": "FP32", "shape": served.input_shape}]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [{"name": served.output_name, "datatype": "FP32", "shape": served.output_shape}]

        def batch(self, request: InferRequest) -> np.ndarray:
            """The request's one input as (B, C, H, W) float32; InvalidInput (400) if it is not that."""
            if len(request.inputs) != 1 or request.inputs[0].name != served.input_name:
                raise InvalidInput(f"the model takes exactly one input, {served.input_name!r}")
            tensor = request.inputs[0]
            if tensor.datatype != "FP32":
                raise InvalidInput(f"datatype {tensor.datatype!r} not supported; send FP32")
            shape = list(tensor.shape)
            if len(shape) != len(served.input_shape) or shape[1:] != served.input_shape[1:] or shape[0] < 1:
                raise InvalidInput(f"input shape {shape} does not match the model's {served.input_shape}")
            if shape[0] > self.max_batch:
                raise InvalidInput(f"batch of {shape[0]} exceeds the limit of {self.max_batch}")
            try:
                array = np.asarray(tensor.as_numpy(), dtype=np.float32).reshape(shape)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"input data does not hold shape {shape}: {exc}") from None
            if not np.isfinite(array).all():
                raise InvalidInput("input holds NaN or infinite values")
            return array

        async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse:
            if not isinstance(payload, InferRequest):
                raise InvalidInput("send an Open Inference Protocol v2 request")
            batch = self.batch(payload)
            logits = await asyncio.to_thread(served.infer, batch)  # ONNX Runtime releases the GIL
            output = InferOutput(name=served.output_name, shape=list(logits.shape), datatype="FP32")
            output.set_data_from_numpy(logits, binary_data=payload.use_binary_outputs)
            return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=served.name,
                                 infer_outputs=[output], use_binary_outputs=payload.use_binary_outputs,
                                 requested_outputs=payload.request_outputs)

    return FakeGradientModel()


def add_config_route(models: list[Any]) -> None:
    """``GET /v2/models/<name>/config`` on KServe's app: Triton's place for the public parameters."""
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    configs = {m.name: public_config(m.served, m.max_batch) for m in models}

    async def config(model_name: str) -> JSONResponse:
        if model_name not in configs:
            return JSONResponse({"error": f"Model with name {model_name} does not exist."}, status_code=404)
        return JSONResponse(configs[model_name])

    app.add_api_route("/v2/models/{model_name}/config", config, methods=["GET"])


def main(argv: list[str] | None = None) -> None:
    """``--model_dir``, ``--max_batch``, ``--host``; KServe's own flags (``--model_name``, ``--http_port``,
    ``--grpc_port``, ...) as ``kserve.model_server`` reads them."""
    import socket

    kserve = _kserve()
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import parser as kserve_parser
    from kserve.protocol.rest.server import RESTServer

    parser = argparse.ArgumentParser(parents=[kserve_parser], conflict_handler="resolve",
                                     description="serve a protected model folder with KServe's ModelServer")
    parser.add_argument("--model_dir", type=Path, required=True, help="the protected model folder (model.onnx)")
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch accepted")
    parser.add_argument("--host", default="0.0.0.0",
                        help="address of the REST server (KServe's default 0.0.0.0, with its gRPC server on all "
                             "interfaces; any other address: REST only, on that address)")
    args, _ = parser.parse_known_args(argv)
    if args.max_batch < 1:
        parser.error(f"--max_batch must be >= 1, got {args.max_batch}")
    model = make_model(args.model_dir, args.model_name, args.max_batch)
    add_config_route([model])
    if args.host == "0.0.0.0":
        kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                           workers=1).start([model])
        return
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1)
    server.register_model(model)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
                      args.http_port)
    sock = socket.create_server((args.host, args.http_port))
    rest.run(sockets=[sock])


if __name__ == "__main__":
    import sys

    from ..errors import FakeGradientError

    try:
        main()
    except FakeGradientError as exc:  # a bad folder: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
