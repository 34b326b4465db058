"""Dynamic batching: requests queued while the runners are busy run as one ONNX Runtime call (up to a number
of rows, or once a delay has passed), and each gets its own rows back: equal, within float rounding, to
running it alone (BLAS may sum a row differently in a batch of another size)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_server_support import INPUT_SHAPE, ROWS, request, running_server, tiny_models, tiny_request

from fakegradient.serving.batching import Batching, DynamicBatcher
from fakegradient.serving.protocol import HEADER_LENGTH
from fakegradient.serving.server import Limits

ATOL = 1e-5  # the tiny model's outputs are O(1): a different GEMM shape changes them by rounding only


class Recorder:
    """A model stand-in (row-wise: output row = 2 x the input's first values) that records each batch's
    size; while ``hold`` is clear, runs wait for it."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.entered = threading.Semaphore(0)
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        self.entered.release()
        assert self.hold.wait(timeout=60)
        return 2 * batch.reshape(len(batch), -1)[:, :ROWS]


def rows(count: int, start: int) -> np.ndarray:
    return np.arange(start, start + count * 12, dtype=np.float32).reshape(count, *INPUT_SHAPE)


def test_requests_queued_while_the_runner_is_busy_run_as_one_batch():
    async def scenario() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_rows=16, max_delay=0.0), asyncio.Semaphore(1))
        model.hold.clear()
        inputs = [rows(1, 0), rows(2, 100), rows(1, 200), rows(3, 300)]
        first = asyncio.ensure_future(batcher.submit(inputs[0]))
        await asyncio.to_thread(model.entered.acquire, timeout=60)  # the only runner is busy with it
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in inputs[1:]]
        await asyncio.sleep(0)  # they are queued
        model.hold.set()
        outputs = await asyncio.wait_for(asyncio.gather(first, *rest), 60)
        return model.batches, inputs, outputs

    batches, inputs, outputs = asyncio.run(scenario())
    assert batches == [1, 6]  # the three queued requests (2 + 1 + 3 rows) ran as one
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(y, 2 * x.reshape(len(x), -1)[:, :ROWS])  # its own rows, in order


def test_batches_stop_at_max_rows_and_a_larger_request_runs_alone():
    async def scenario() -> list[int]:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_rows=4, max_delay=0.0), asyncio.Semaphore(1))
        model.hold.clear()
        first = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        await asyncio.to_thread(model.entered.acquire, timeout=60)
        sizes = [3, 2, 6, 1, 1]
        rest = [asyncio.ensure_future(batcher.submit(rows(n, 10 * i))) for i, n in enumerate(sizes)]
        await asyncio.sleep(0)
        model.hold.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 60)
        return model.batches

    assert asyncio.run(scenario()) == [1, 3, 2, 6, 2]  # in order: 3 | 2 (+6 would not fit) | 6 alone | 1+1


def test_a_free_runner_waits_for_more_requests_until_the_batch_is_full():
    async def scenario() -> list[int]:
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(max_rows=2, max_delay=3600.0), asyncio.Semaphore(1))
        first = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        await asyncio.sleep(0.01)
        assert not first.done() and model.batches == []  # waiting for a second row (up to an hour)...
        second = batcher.submit(rows(1, 12))
        await asyncio.wait_for(asyncio.gather(first, second), 60)  # ...which fills the batch: both run now
        return model.batches

    assert asyncio.run(scenario()) == [2]


def test_a_failing_run_fails_its_requests_and_not_the_next_ones():
    async def scenario() -> None:
        calls = []

        def flaky(batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("boom")
            return batch.reshape(len(batch), -1)[:, :ROWS]

        batcher = DynamicBatcher(flaky, Batching(max_rows=8, max_delay=0.0), asyncio.Semaphore(1))
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(batcher.submit(rows(1, 0)), 60)
        assert (await asyncio.wait_for(batcher.submit(rows(2, 0)), 60)).shape == (2, ROWS)
        batcher.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    (model,) = tiny_models(tmp_path_factory.mktemp("models"))
    limits = Limits(max_body_bytes=2**20, max_batch=4, max_inflight=32, max_runs=1)
    with running_server([model], limits, batching=Batching(enabled=True, max_rows=16, max_delay=0.005)) as address:
        yield address, model


def test_concurrent_requests_each_get_their_own_outputs(served):
    address, model = served
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 3, *INPUT_SHAPE)).astype(np.float32)
              for i in range(48)]

    def send(x: np.ndarray) -> np.ndarray:
        head = (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": %s, "parameters": '
                b'{"binary_data_size": %d}}], "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}'
                % (str(list(x.shape)).encode(), x.nbytes))
        status, headers, body = request(address, "POST", "/v2/models/tiny/infer", head + x.tobytes(),
                                        {HEADER_LENGTH: str(len(head))})
        assert status == 200, body
        length = int({k.lower(): v for k, v in headers.items()}[HEADER_LENGTH.lower()])
        return np.frombuffer(body[length:], "<f4").reshape(len(x), ROWS)

    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(send, inputs))
    for x, y in zip(inputs, outputs):
        np.testing.assert_allclose(y, model.infer(x), rtol=0, atol=ATOL)  # as if run alone
    status, _, body = request(address, "POST", "/v2/models/tiny/infer", tiny_request(inputs[0]))
    assert status == 200  # JSON requests go through the batcher too
