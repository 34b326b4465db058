"""The device client's gRPC wire (``classify --server grpc://host:port``): the Open Inference Protocol v2 calls it
needs, their answers as the REST client's JSON values (dicts, lists) so that :mod:`.client` checks them alike.
Needs ``grpcio`` (``pip install 'fakegradient[grpc]'``); the base device install (numpy + Pillow) has no gRPC.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import numpy as np

from ..classify import Unreachable
from ..errors import FakeGradientError

SERVICE = "/inference.GRPCInferenceService/"
MAX_ANSWER_BYTES = 64 * 2**20
BUSY_HINT = "retry later"  # in the server's UNAVAILABLE answers for load: the server is there


def _grpc() -> Any:
    try:
        import google.protobuf  # noqa: F401  (grpcio does not install it)
        import grpc
    except ImportError:
        raise FakeGradientError("a grpc:// server needs grpcio: pip install 'fakegradient[grpc]'") from None
    return grpc


def target(url: str) -> str:
    """``host:port`` of a ``grpc://host:port`` URL; a one-line error for anything else."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise FakeGradientError(f"invalid server URL {url!r}: {exc}") from None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        raise FakeGradientError(f"invalid server URL {url!r}: give grpc://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


class GrpcWire:
    """One channel to a v2 gRPC server; each call raises :class:`FakeGradientError` for the server's refusal
    (its status and message) and :class:`Unreachable` when the server cannot be reached."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None) -> None:
        grpc = _grpc()
        from . import open_inference_pb2 as pb

        self.url, self.timeout, self.pb = url, timeout, pb
        self.metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.channel = grpc.insecure_channel(target(url), options=[
            ("grpc.max_receive_message_length", MAX_ANSWER_BYTES)])

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, response: type) -> Any:
        grpc = _grpc()
        call = self.channel.unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString,
                                        response_deserializer=response.FromString)
        try:
            return call(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            code, details = exc.code(), " ".join(str(exc.details() or "").split())[:300]
            if code == grpc.StatusCode.UNAVAILABLE and BUSY_HINT not in details:
                raise Unreachable(f"cannot reach {self.url}: {details or code.name}") from None
            raise FakeGradientError(f"server answered {code.name}: {details}") from None

    def repository_index(self) -> list[dict[str, Any]]:
        answer = self._call("RepositoryIndex", self.pb.RepositoryIndexRequest(), self.pb.RepositoryIndexResponse)
        return [{"name": m.name} for m in answer.models]

    def model_metadata(self, name: str) -> dict[str, Any]:
        answer = self._call("ModelMetadata", self.pb.ModelMetadataRequest(name=name), self.pb.ModelMetadataResponse)
        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]
        return {"name": answer.name, "inputs": tensors(answer.inputs), "outputs": tensors(answer.outputs)}

    def model_config(self, name: str) -> dict[str, Any]:
        """Triton's model config as its REST endpoint writes it: max_batch_size and string parameters."""
        config = self._call("ModelConfig", self.pb.ModelConfigRequest(name=name), self.pb.ModelConfigResponse).config
        return {"name": config.name, "max_batch_size": config.max_batch_size,
                "parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}}

    def infer(self, model: str, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
        """(B, ...) float32 → the output ``output_name`` (B, outputs) float32, sent and received as raw bytes."""
        pb = self.pb
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=list(batch.shape))
        request.outputs.add(name=output_name)
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype="<f4").tobytes())
        answer = self._call("ModelInfer", request, pb.ModelInferResponse)
        found = [i for i, o in enumerate(answer.outputs) if o.name == output_name]
        if len(found) != 1:
            raise FakeGradientError(f"malformed inference answer: expected one output {output_name!r}, "
                                    f"got {len(found)}")
        output = answer.outputs[found[0]]
        shape = list(output.shape)
        if len(shape) != 2 or shape[0] != len(batch) or output.datatype != "FP32":
            raise FakeGradientError(f"malformed inference answer: output {shape} {output.datatype} for a batch "
                                    f"of {len(batch)}")
        if len(answer.raw_output_contents) == len(answer.outputs):
            values = np.frombuffer(answer.raw_output_contents[found[0]], dtype="<f4")
        else:
            values = np.asarray(output.contents.fp32_contents, dtype=np.float32)
        if values.size != shape[0] * shape[1]:
            raise FakeGradientError(f"malformed inference answer: {values.size} values for shape {shape}")
        return values.reshape(shape).copy()
