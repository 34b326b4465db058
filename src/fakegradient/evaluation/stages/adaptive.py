"""Round 2 of ``--adaptive``: every registered attacker (:data:`.attackers.ATTACKERS`) on one scheme and
one slice of images, the unprotected original included (its rows are the sanity baselines).
Defense success = the device's real top-1 on the attacked image is the original clean top-1."""

from __future__ import annotations

import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from ...data import Sample
from ...errors import ConfigError
from ...methods import scheme
from ..plan import Shard, ShardResult
from ..roofline import Passes, PassTimes, summary
from ..workbench import Workbench, flush_subnormals
from .attackers import ATTACKERS, Attempt, Context, Target, _head_name
from .common import attacker_records

FLUSH_SUBNORMALS = True  # off: IEEE subnormals in every row (benchmarks/matrix_speed.py compares both)


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


def pass_times(bench: Workbench) -> PassTimes:
    """One pass of each kind timed alone on this worker's served pipelines, once per worker (cached)."""
    key = ("pass-times",)
    if key not in bench.memo:
        bench.memo[key] = PassTimes({m: served for m, (served, _) in bench.served.items()},
                                    device=bench.config.device)
    return bench.memo[key]


def run(bench: Workbench, shard: Shard, images: torch.Tensor, samples: list[Sample]) -> ShardResult:
    """Records of every attacker that applies; values: ``seconds`` (attacker → seconds of the computation
    its images came from, a shared computation charged to each user), ``timing`` (attacker → ``own_s``: this
    row's own wall time here, a memoised computation counted once, at the row that ran it; ``own_cpu_s``: the
    CPU seconds of this process meanwhile, every thread; ``reused``: the
    rows whose computations it used; ``passes``: kind → [calls, rows] it ran; ``roofline_s``: those passes
    timed alone, see :mod:`..roofline`; ``timing_s``: the time that timing took, outside ``own_s``),
    ``key_recovery`` (attacker → what it recovered of this scheme), ``curves`` (attacker → [(eps, defended
    flags (b,))]) for attacks run at several budgets."""
    budgets = dict(shard.budgets)
    scheme = target(bench, shard.method)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    records, seconds, timing, curves, recovered = [], {}, {}, {}, {}
    times = pass_times(bench)
    limits = check_limits(bench.config.images_per_attacker)
    steps = tqdm(ATTACKERS.items(), desc=f"{shard.method} [{shard.start}, {shard.stop})", unit="attacker",
                 leave=False, disable=None)  # off where stderr is no terminal (Ray workers, tests)
    with Passes(times.pipelines) as passes:
        for name, attacker in steps:
            steps.set_postfix_str(name)
            if attacker.run is None:
                continue
            passes.counts.clear()
            ctx, attempt, own, own_cpu = _attack(bench, shard, scheme, name, limits.get(name), images,
                                                 budgets, truth)
            if attempt is None:
                continue
            counts = Counter(passes.counts)  # before judging: the device's forward passes are not the attack's
            with passes.paused():
                begin = time.perf_counter()
                roofline = times.seconds(counts)
                timing[name] = {"own_s": own, "own_cpu_s": own_cpu, "reused": sorted(ctx.reused),
                                "passes": summary(counts),
                                "roofline_s": roofline, "timing_s": time.perf_counter() - begin}
            seconds[name] = attempt.seconds or own
            defended = scheme.device(attempt.adversarial).argmax(1) == ctx.truth
            records += attacker_records(shard, shard.method, name, samples[:len(ctx.images)], defended,
                                        attempt.adversarial, ctx.images, attempt.queries, attempt.named)
            if attempt.curve:
                curves[name] = [(eps, (scheme.device(x).argmax(1) == ctx.truth).tolist()) for eps, x in attempt.curve]
            if attacker.key_recovery:
                recovered[name] = bench.memo[("recovery", name, shard.method)].summary()
    return ShardResult(records, values={"seconds": seconds, "timing": timing, "key_recovery": recovered,
                                        "curves": curves})


def _attack(bench: Workbench, shard: Shard, scheme: Target, name: str, limit: int | None, images: torch.Tensor,
            budgets: dict, truth: torch.Tensor) -> tuple[Context | None, Attempt | None, float, float]:
    """Attacker ``name`` on its images of this shard (the first ``limit`` of the run, ``--attacker-images``;
    None: all): (its context, its attempt or None where it does not apply or has no image here, its wall
    seconds, this process's CPU seconds meanwhile: every thread, so a row on two torch threads may count two
    per wall second)."""
    count = len(images) if limit is None else max(0, min(shard.stop, limit) - shard.start)
    if count == 0:
        return None, None, 0.0, 0.0
    ctx = Context(bench, scheme, images[:count], shard.start, budgets, truth[:count], row=f"{shard.method}/{name}")
    begin, begin_cpu = time.perf_counter(), time.process_time()
    result = attack(name, ctx)
    return ctx, result, time.perf_counter() - begin, time.process_time() - begin_cpu


def attack(name: str, ctx: Context) -> Attempt | None:
    """Attacker ``name`` on ``ctx``: the rows marked ``flushes_subnormals`` (PGD, EOT-PGD, APGD with the
    cross-entropy, C&W) with subnormals flushed to zero where :data:`FLUSH_SUBNORMALS`, every other row with IEEE
    arithmetic (see :func:`..workbench.flush_subnormals`)."""
    with flush_subnormals(FLUSH_SUBNORMALS and ATTACKERS[name].flushes_subnormals):
        return ATTACKERS[name].run(ctx)
