"""The data plane without a transport: the operations every transport (REST today, gRPC next) calls, each
raising the typed errors of serving/errors.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_server_support import INPUT_SHAPE, ROWS, head_weights, tiny_models, tiny_request

from fakegradient.serving.dataplane import DataPlane
from fakegradient.serving.errors import InvalidInput, ModelNotFound, PayloadTooLarge, ServerBusy, Unauthorized
from fakegradient.serving.protocol import InferRequest
from fakegradient.serving.settings import Access, Batching, Limits

TOKEN = "5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
GOOD = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, *INPUT_SHAPE)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("plane"))


def expected(x: np.ndarray) -> np.ndarray:
    weight, bias = head_weights()
    return x.reshape(len(x), -1) @ weight.T + bias


@pytest.mark.parametrize("batching", [Batching(), Batching(enabled=True)])
def test_infer_takes_a_parsed_request_and_returns_the_outputs(models, batching):
    async def scenario():
        plane = DataPlane(models, Limits(max_batch=4), batching=batching)
        try:
            return await plane.infer("tiny", InferRequest({"input": GOOD}, False, None))
        finally:
            plane.close()

    outputs = asyncio.run(scenario())
    assert list(outputs) == ["logits"] and outputs["logits"].shape == (2, ROWS)
    np.testing.assert_allclose(outputs["logits"], expected(GOOD), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inputs, error, message", [
    ({"x": GOOD}, InvalidInput, "unknown input 'x'"),
    ({}, InvalidInput, "exactly one input, got 0"),
    ({"input": GOOD.astype(np.float64)}, InvalidInput, "datatype 'float64' not supported"),
    ({"input": GOOD.reshape(2, 12)}, InvalidInput, "does not match the model's"),
    ({"input": np.concatenate([GOOD] * 3)}, PayloadTooLarge, "batch of 6 exceeds the limit of 4"),
    ({"input": np.full_like(GOOD, np.nan)}, InvalidInput, "NaN or infinite"),
])
def test_infer_checks_another_transports_request_as_rest_does(models, inputs, error, message):
    plane = DataPlane(models, Limits(max_batch=4))
    with pytest.raises(error, match=message):
        asyncio.run(plane.infer("tiny", InferRequest(inputs, False, None)))


def test_lookup_auth_admission_and_metadata(models):
    plane = DataPlane(models, Limits(max_inflight=1), Access(token=TOKEN))
    with pytest.raises(Unauthorized, match="bearer token is needed"):
        plane.authorize(None)
    with pytest.raises(Unauthorized, match="invalid bearer token"):
        plane.authorize("Bearer nope")
    plane.authorize(f"Bearer {TOKEN}")
    with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
        plane.model("nope")
    with pytest.raises(ModelNotFound, match="no version '2'"):
        plane.model_metadata("tiny", "2")
    with plane.admit(), pytest.raises(ServerBusy, match="1 requests in progress"):
        asyncio.run(plane.infer("tiny", InferRequest({"input": GOOD}, False, None)))
    assert plane.inflight == 0
    meta = plane.model_metadata("tiny")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *INPUT_SHAPE]}]
    assert set(meta["parameters"]) == {"fingerprint"}  # minimal: no architecture, no class names
    assert plane.model_config("tiny")["max_batch_size"] == Limits().max_batch


def test_infer_body_is_the_rest_codec_around_infer(models):
    plane = DataPlane(models)
    answer = asyncio.run(plane.infer_body("tiny", tiny_request(GOOD, parameters={"binary_data_output": True}), None))
    assert answer.media_type == "application/octet-stream"
    length = int(answer.headers["Inference-Header-Content-Length"])
    np.testing.assert_allclose(np.frombuffer(answer.body[length:], "<f4").reshape(2, ROWS), expected(GOOD),
                               rtol=1e-5, atol=1e-5)


def test_an_output_the_model_does_not_have_is_refused_on_every_transport(models):
    plane = DataPlane(models)
    with pytest.raises(InvalidInput, match="unknown output 'probabilities'"):
        asyncio.run(plane.infer("tiny", InferRequest({"input": GOOD}, False, None, ("probabilities",))))
    outputs = asyncio.run(plane.infer("tiny", InferRequest({"input": GOOD}, False, None, ("logits",))))
    assert list(outputs) == ["logits"]
