"""Dynamic batching, as Triton's dynamic batcher does it: requests for a model wait in a queue; when an ONNX
Runtime runner is free, the queued requests (up to ``max_rows`` rows, waiting at most ``max_delay`` seconds
for more once the first has arrived) run as one call, whose output rows are split back per request.

The queue is bounded by the server's in-flight limit (503 + Retry-After beyond it). A request's rows go
through another GEMM shape than alone, so its outputs equal those of a lone run up to float rounding only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import numpy as np

from .settings import Batching


@dataclass
class _Job:
    batch: np.ndarray
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """The queue and batch former of one model; runs share ``runners`` (at most that many runs at once)."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], settings: Batching,
                 runners: asyncio.Semaphore) -> None:
        self.infer, self.settings, self.runners = infer, settings, runners
        self.pending: deque[_Job] = deque()
        self.arrival = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()  # the former and the runs in progress (kept referenced)
        self.former: asyncio.Task | None = None

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """The model's outputs for ``batch``, computed within a batch of queued requests."""
        loop = asyncio.get_running_loop()
        job = _Job(batch, loop.create_future(), loop.time())
        self.pending.append(job)
        self.arrival.set()
        if self.former is None or self.former.done():
            self.former = self._spawn(self._form_batches())
        return await job.future

    def close(self) -> None:
        """Cancel the former and the runs (server shutdown)."""
        for task in list(self.tasks):
            task.cancel()

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _form_batches(self) -> None:
        while True:
            while not self.pending:
                self.arrival.clear()
                await self.arrival.wait()
            await self.runners.acquire()  # a runner is free: what queued meanwhile goes in one run
            try:
                jobs = await self._gather()
            except BaseException:
                self.runners.release()
                raise
            if jobs:
                self._spawn(self._run(jobs))
            else:  # every request gathered had been abandoned
                self.runners.release()

    async def _gather(self) -> list[_Job]:
        """Take queued requests in order while they fit in max_rows, waiting for more until max_delay after
        the oldest arrived."""
        loop, limit = asyncio.get_running_loop(), self.settings.max_rows
        jobs: list[_Job] = []
        rows = 0
        deadline = self.pending[0].arrived + self.settings.max_delay
        while True:
            while self.pending and (not jobs or rows + len(self.pending[0].batch) <= limit):
                job = self.pending.popleft()
                if not job.future.done():  # not abandoned
                    jobs.append(job)
                    rows += len(job.batch)
            full = rows >= limit or bool(self.pending)  # the next one would not fit
            if full or loop.time() >= deadline:
                return jobs
            self.arrival.clear()
            try:
                await asyncio.wait_for(self.arrival.wait(), deadline - loop.time())
            except TimeoutError:
                pass

    async def _run(self, jobs: list[_Job]) -> None:
        try:
            batch = jobs[0].batch if len(jobs) == 1 else np.concatenate([job.batch for job in jobs])
            outputs = await anyio.to_thread.run_sync(self.infer, batch)
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model returned {len(outputs)} rows for {len(batch)}")
            bounds = np.cumsum([len(job.batch) for job in jobs])[:-1]
            for job, rows in zip(jobs, np.split(outputs, bounds)):
                if not job.future.done():
                    job.future.set_result(rows)
        except Exception as exc:  # the requests of this batch fail alike (the server answers 500)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self.runners.release()
