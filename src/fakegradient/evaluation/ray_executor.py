"""Running shards on Ray (optional extra ``fakegradient[ray]``; nothing imports ray without ``--ray``).

Workers load the model from the torch hub cache and their slice of images from the data path
themselves: nothing but the configuration and the shard travels from the driver. A shard whose
worker dies or raises is retried by Ray (``max_retries``) and recorded once by the driver.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path


from ..errors import FakeGradientError
from .shards import Shard

CRASH_ONCE_ENV = "FAKEGRADIENT_TEST_CRASH_ONCE_DIR"  # tests: a worker dies once per shard


@functools.lru_cache(maxsize=4)
def _context(config_items: tuple, spec: str):
    """Per worker process: the model, its pixel preprocessing and the sample list (built once)."""
    from .pipeline import load_pipeline
    from .runner import EvaluationConfig, load_samples

    config = EvaluationConfig(**dict(config_items))
    pipeline, pixel = load_pipeline(spec, config.device)
    return config, pipeline, pixel, load_samples(config)


@functools.lru_cache(maxsize=8)
def _served(config_items: tuple, spec: str, method: str, seed: int):
    from ..data import load_batch
    from .pipeline import protected_pipeline

    config, original, pixel, samples = _context(config_items, spec)
    if method == "original":
        return original, None
    probe = load_batch([samples[0].path], pixel).to(config.device)  # the driver traces on image 0 too
    return protected_pipeline(original, method, scale=config.scale, seed=seed, probe=probe)


def run_shard(config_items: tuple, shard: Shard, seed: int, heatmap_images: int):
    """One shard on a worker → (records as dicts, perturbations of heatmap images or None)."""
    crash_dir = os.environ.get(CRASH_ONCE_ENV)
    if crash_dir:
        marker = Path(crash_dir) / shard.id
        if not marker.exists():
            marker.touch()
            os._exit(1)  # simulate a worker killed mid-run
    from ..attacks.deepfool import DeepFool
    from ..data import load_batch
    from .runner import full_fp32
    from .shards import attack_batch

    config, original, pixel, samples = _context(config_items, shard.model)
    served, key = _served(config_items, shard.model, shard.method, seed)
    part = samples[shard.start : shard.stop]
    images = load_batch([s.path for s in part], pixel).to(config.device)
    attack = DeepFool(config.candidates, config.overshoot, config.max_iter, (0.0, 1.0) if config.clip else None)
    with full_fp32():
        records, perturbation = attack_batch(shard, original, served, key, images, part, attack)
    keep = max(0, heatmap_images - shard.start)
    return [asdict(r) for r in records], (perturbation[:keep].numpy() if keep else None)


class RayExecutor:
    """Submits shards as Ray tasks and yields (shard, records, perturbation) as they finish."""

    def __init__(self, address: str | None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise FakeGradientError("--ray needs Ray: pip install 'fakegradient[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"num_cpus": workers} if address in (None, "", "local") and workers else {}
            ray.init(address=None if address in (None, "", "local") else address, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR", **kwargs)
        self.remote = ray.remote(max_retries=3, retry_exceptions=True)(run_shard)

    def run(self, config, shards: list[Shard], seed: int) -> Iterator[tuple[Shard, list[dict], object]]:
        from .runner import config_dict

        items = tuple(sorted(config_dict(config).items(), key=lambda kv: kv[0]))
        items = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in items)
        pending = {self.remote.options(num_gpus=1 if config.device.startswith("cuda") else 0)
                   .remote(items, shard, seed, config.heatmap_images): shard for shard in shards}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            shard = pending.pop(done[0])
            records, perturbation = self.ray.get(done[0])
            yield shard, records, perturbation

    def shutdown(self) -> None:
        self.ray.shutdown()
