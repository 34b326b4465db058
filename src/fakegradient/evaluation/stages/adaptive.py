"""Round 2 of ``--adaptive``: every registered attacker (:data:`.attackers.ATTACKERS`) on one scheme and
one slice of images, the unprotected original included (its rows are the sanity baselines).
Defense success = the device's real top-1 on the attacked image is the original clean top-1."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ...data import Sample
from ...errors import ConfigError
from ...methods import scheme
from ..plan import Shard, ShardResult
from ..workbench import Workbench
from .attackers import ATTACKERS, Context, Target, _head_name
from .common import attacker_records


def check_limits(limits: dict[str, int]) -> dict[str, int]:
    """``--attacker-images``, its names checked against the registry."""
    unknown = sorted(set(limits) - {name for name, a in ATTACKERS.items() if a.run is not None})
    if unknown:
        raise ConfigError("attacker_images", f"attacker_images: unknown or round-1 attacker(s) {unknown}; one of "
                              f"{', '.join(n for n, a in ATTACKERS.items() if a.run is not None)}")
    return limits


def target(bench: Workbench, method: str) -> Target:
    served, secret = bench.served[method]
    if secret is None:
        return Target(method, served, None, _head_name(bench, served))
    capabilities = scheme(method).capabilities
    return Target(method, served, secret, _head_name(bench, served) if capabilities.head_rows else None,
                  capabilities)


def run(bench: Workbench, shard: Shard, images: torch.Tensor, samples: list[Sample]) -> ShardResult:
    """Records of every attacker that applies; values: ``seconds`` (attacker → seconds spent on these
    images, shared computations counted for each user), ``key_recovery`` (attacker → what it recovered
    of this scheme), ``curves`` (attacker → [(eps, defended flags (b,))]) for attacks run at several budgets."""
    budgets = dict(shard.budgets)
    scheme = target(bench, shard.method)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    records, seconds, curves, recovered = [], {}, {}, {}
    limits = check_limits(bench.config.images_per_attacker)
    steps = tqdm(ATTACKERS.items(), desc=f"{shard.method} [{shard.start}, {shard.stop})", unit="attacker",
                 leave=False, disable=None)  # off where stderr is no terminal (Ray workers, tests)
    for name, attacker in steps:
        steps.set_postfix_str(name)
        if attacker.run is None:
            continue
        limit = limits.get(name)
        count = len(images) if limit is None else max(0, min(shard.stop, limit) - shard.start)
        if count == 0:
            continue
        ctx = Context(bench, scheme, images[:count], shard.start, budgets, truth[:count])
        begin = time.perf_counter()
        attempt = attacker.run(ctx)
        if attempt is None:  # does not apply to this scheme
            continue
        seconds[name] = attempt.seconds or time.perf_counter() - begin
        defended = scheme.device(attempt.adversarial).argmax(1) == ctx.truth
        records += attacker_records(shard, shard.method, name, samples[:count], defended, attempt.adversarial,
                                    ctx.images, attempt.queries, attempt.named)
        if attempt.curve:
            curves[name] = [(eps, (scheme.device(x).argmax(1) == ctx.truth).tolist()) for eps, x in attempt.curve]
        if attacker.key_recovery:
            recovered[name] = bench.memo[("recovery", name, shard.method)].summary()
    return ShardResult(records, values={"seconds": seconds, "key_recovery": recovered, "curves": curves})
