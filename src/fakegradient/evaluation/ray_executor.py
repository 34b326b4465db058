"""Running shards on Ray (optional extra ``fakegradient[ray]``; nothing imports ray without ``--ray``).

Shards go through Ray Data ``map_batches`` (in :func:`~.plan.groups` where there are enough groups to keep
every actor busy: the adaptive shards of one image slice on one actor, whose memo they share) to a pool of
actors — one GPU each on CUDA, one CPU each otherwise — that load the model from the torch hub cache and their
images from the data path themselves (or from a CPU stage that decodes images ahead of them, when CPUs are left over)
and keep the model between shards: only the configuration and the shards travel from the driver.
A worker that dies is restarted and its shard retried (Ray Data's actor fault tolerance); the
driver records each shard once, as it finishes. A shard that raises stops the run; ``--resume``
then continues from the shards already written.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._lazy import missing_message
from ..data import load_batch
from ..errors import FakeGradientError
from .config import EvaluationConfig
from .pipeline import pixel_preprocessing, spec_weights
from .plan import Shard, ShardResult, group_from_json, group_to_json, groups
from .stages import run_shard
from .workbench import Workbench

class ShardWorker:
    """A Ray Data actor: batches of shard groups (rows ``shard``: JSON lists of shards of one image slice)
    → a row per shard (``shard``: its JSON, ``result``: its pickled ShardResult), run in the group's order
    and yielded as each finishes (a group can run for an hour: the driver stores its shards as they come)."""

    def __init__(self, config: dict, seed: int):
        self.config, self.seed, self.benches = EvaluationConfig.from_dict(config), seed, {}

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        import torch

        for i, text in enumerate(batch["shard"]):
            images = None
            if "images" in batch:  # decoded by the CPU stage
                images = torch.from_numpy(pickle.loads(batch["images"][i])).to(self.config.device)
            for shard in group_from_json(str(text)):
                if shard.model not in self.benches:
                    self.benches[shard.model] = Workbench.load(self.config, shard.model, self.seed)
                result = pickle.dumps(run_shard(self.benches[shard.model], shard, images))
                yield {"shard": np.array([shard.to_json()], dtype=object), "result": np.array([result], dtype=object)}


def decode_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CPU stage: each shard's images (rows ``paths``: JSON) decoded and preprocessed for its
    model → rows ``images`` (pickled (b, C, H, W) float32), so GPU actors never wait on JPEG decoding."""
    images = []
    for text, paths in zip(batch["shard"], batch["paths"]):
        pixel = _pixel_preprocessing(group_from_json(str(text))[0].model)
        images.append(pickle.dumps(load_batch([Path(p) for p in json.loads(str(paths))], pixel).numpy()))
    return {"shard": batch["shard"], "images": np.array(images, dtype=object)}


@functools.lru_cache(maxsize=8)
def _pixel_preprocessing(spec: str):
    return pixel_preprocessing(spec_weights(spec))[0]


def _root_cause(exc: BaseException) -> str:
    """The worker's own error from a Ray error, whose text holds the remote traceback (the
    original exception is not kept as an object): our message if it is ours, else the first
    exception line, which is the root of the chain."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    ours = re.search(r"FakeGradientError: (.+)", text)
    if ours:
        return ours.group(1)
    first = re.search(r"^\s*([\w.]+(?:Error|Exception|Exit)): (.+)$", text, re.MULTILINE)
    if first:
        return f"{first.group(1)}: {first.group(2)}"
    return text.splitlines()[0] if text else type(exc).__name__


class RayExecutor:
    """Runs shards on a local Ray instance or a cluster and yields (shard, result) as they finish;
    ``worker``: the actor class (a :class:`ShardWorker`; tests pass one that fails on purpose)."""

    def __init__(self, address: str | None, workers: int | None = None, *, worker: type[ShardWorker] = ShardWorker):
        if workers is not None and workers < 1:
            raise FakeGradientError(f"--ray-workers must be >= 1, got {workers}")
        try:
            import ray
            import ray.data
        except ImportError:
            raise FakeGradientError(missing_message("--ray (Ray Data)", "ray")) from None
        self.ray, self.workers, self.worker, self.decode_stage = ray, workers, worker, False
        local = address in (None, "", "local")
        if not ray.is_initialized():
            ray.init(address=None if local else address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", **({"num_cpus": workers} if local and workers else {}))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar of its own
        context.execution_options.preserve_order = False  # results as they finish
        context.target_max_block_size = 1  # each yielded shard its own block: on to the driver as it is done
        context.execution_no_progress_timeout_s = -1  # Ray's 1800 s stops runs whose shards run longer
        logging.getLogger("ray.data").setLevel(logging.ERROR)

    def pool_size(self, gpu: bool) -> int:
        """Actors: ``--ray-workers``, else one per GPU of the cluster (CUDA) or one per CPU."""
        resource = "GPU" if gpu else "CPU"
        available = int(self.ray.cluster_resources().get(resource, 0))
        if available < 1 or (self.workers or 0) > available:
            raise FakeGradientError(f"the Ray cluster has {available} {resource}(s); each worker needs one"
                                    + (f" (--ray-workers {self.workers})" if self.workers else ""))
        return self.workers or available

    def run(self, bench: Workbench, shards: list[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        """Shards of ``bench``'s samples through the actors, which build their own workbench from its
        config and seed; when the actors leave CPUs free (always with GPU actors on a node with more CPUs
        than GPUs), a CPU stage decodes the next shards' images."""
        config, samples = bench.config, bench.samples
        if not shards:
            return
        gpu = config.device.startswith("cuda")
        pool, grouped = self.pool_size(gpu), groups(shards)
        if len(grouped) < pool:  # too few groups to keep every actor busy: a shard an actor
            grouped = [[shard] for shard in shards]
        size = min(pool, len(grouped))
        decode = self.decode_stage = int(self.ray.cluster_resources().get("CPU", 0)) > size
        items = [{"shard": group_to_json(group),
                  "paths": json.dumps([str(sample.path) for sample in samples[group[0].start : group[0].stop]])}
                 for group in grouped]
        data = self.ray.data.from_items(items, override_num_blocks=len(items))  # a block (one call) a group
        if decode:
            data = data.map_batches(decode_images, batch_size=1, num_cpus=1)
        arguments = (config.to_dict(), bench.seed)
        results = data.map_batches(
            self.worker, fn_constructor_args=arguments, batch_size=1, num_gpus=1 if gpu else 0, num_cpus=1,
            compute=self.ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1))
        try:
            for row in results.iter_rows():
                yield Shard.from_json(str(row["shard"])), pickle.loads(row["result"])
        except self.ray.exceptions.RayError as exc:
            raise FakeGradientError(f"a shard failed on a Ray worker: {_root_cause(exc)}. The finished "
                                    "shards are kept: fix the cause and rerun with --resume") from None

    def shutdown(self) -> None:
        self.ray.shutdown()
