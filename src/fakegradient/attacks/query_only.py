"""Query-only discovery of the real outputs: the attacker sends only images it makes itself (uniform noise),
never the photos it then attacks, and knows nothing but the served outputs and the scheme's public design.

Each served position is scored by its **spread**: the standard deviation of its output over the noise
queries. A scheme whose fakes are built to win (``fakes_win``, e.g. the paper's S_a-scaled rows) makes its
fake outputs larger, so they vary more: the N least-spread positions are taken as real; otherwise the fakes
were built to stay below the real outputs, and the N most-spread positions are taken as real. Queries are
sent in doubling rounds (2, 4, 8, …) until the chosen set is the same in two successive rounds (or ``limit``):
the number of queries is what the outputs needed, not a constant.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InvalidArgument
from .key_recovery import RecoveredRows
from .known_plaintext import Served, query


def spread_order(outputs: np.ndarray) -> np.ndarray:
    """outputs (Q, K) on Q noise queries → the K positions from least to most spread (std over the
    queries; ties keep position order)."""
    return np.argsort(outputs.std(axis=0), kind="stable")


def believed_real(outputs: np.ndarray, fakes_win: bool) -> np.ndarray:
    """outputs (Q, 2N) → the N positions believed real (sorted): the least spread if ``fakes_win``, else
    the most spread."""
    order, n = spread_order(outputs), outputs.shape[1] // 2
    return np.sort(order[:n] if fakes_win else order[-n:])


def separation(outputs: np.ndarray) -> float:
    """How far apart the two halves' spreads are: median spread of the more-spread half over that of the
    less-spread half (≈ 1: no visible difference; measured: ≈ 90 for the paper's scheme on MobileNetV2,
    1.5-1.8 for the random-weight and hardened fakes)."""
    spread = np.sort(outputs.std(axis=0))
    n = len(spread) // 2
    return float(np.median(spread[n:]) / max(np.median(spread[:n]), 1e-12))


def discover_real_outputs(served: Served, shape: Sequence[int], fakes_win: bool, *, seed: int = 0,
                          first: int = 2, limit: int = 256, device: torch.device | str = "cpu") -> RecoveredRows:
    """The N served positions (of 2N) believed real, from uniform-noise images of ``shape`` (C, H, W) in
    [0, 1] only. Rounds of first, 2·first, … queries (at most ``limit``) until two successive rounds choose
    the same set. ``queries``: the noise images sent; the oracle names the spread separation reached."""
    if first < 2 or limit < 2 * first:
        raise InvalidArgument(f"discover_real_outputs needs first >= 2 and limit >= 2 * first, got {first}, {limit}")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    outputs = np.empty((0, 0))
    chosen, previous, count = None, None, first
    while True:
        noise = torch.rand((count - len(outputs), *shape), generator=generator).to(device)
        batch = query(served, noise).reshape(len(noise), -1)
        outputs = batch if not outputs.size else np.concatenate([outputs, batch])
        if outputs.shape[1] % 2:
            raise InvalidArgument(f"the served model has {outputs.shape[1]} outputs, not 2N")
        previous, chosen = chosen, believed_real(outputs, fakes_win)
        if (previous is not None and np.array_equal(previous, chosen)) or 2 * count > limit:
            break
        count *= 2
    side = "least" if fakes_win else "most"
    return RecoveredRows(chosen, f"output spread over noise ({side} spread = real; separation "
                         f"{separation(outputs):.1f}x)", time.perf_counter() - start, queries=len(outputs))
