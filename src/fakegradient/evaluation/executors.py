"""Where shards are computed: one :class:`Executor` protocol; :class:`LocalExecutor` here, and
:class:`~fakegradient.evaluation.ray_executor.RayExecutor` on a Ray cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .plan import Shard, ShardResult, groups
from .stages import run_shard
from .workbench import Workbench


class Executor(Protocol):
    def run(self, bench: Workbench, shards: list[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        """Compute ``shards`` of ``bench``'s model; yield each with its result as it finishes."""
        ...

    def shutdown(self) -> None: ...


class LocalExecutor:
    """In this process, one shard after the other (in :func:`~.plan.groups`), on the driver's workbench."""

    def run(self, bench: Workbench, shards: list[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        for group in groups(shards):
            for shard in group:
                yield shard, run_shard(bench, shard)

    def shutdown(self) -> None:
        pass
