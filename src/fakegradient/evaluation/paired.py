"""Paired exact test of two binary outcomes on the same images (pure, stdlib only).

Two schemes attacked on the same n images give pairs (a_i, b_i) of defended / not defended. Only the
discordant pairs say anything about a difference: ``b`` images defended by A only, ``c`` by B only. Under
no difference each discordant pair is a fair coin, so the **exact McNemar test** (the two-sided sign test
on the discordant pairs) gives p = min(1, 2 · P(X ≤ min(b, c))), X ~ Binomial(b + c, 1/2); what
``scipy.stats.binomtest(b, b + c, 0.5).pvalue`` returns, computed here without scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import InvalidArgument

METHOD = "exact McNemar (two-sided sign test on the discordant pairs)"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value for ``b`` and ``c`` discordant pairs one way and the other (1.0 when none)."""
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise InvalidArgument(f"discordant counts must be integers >= 0, got {b!r}, {c!r}")
    n, low = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedTest:
    """``pairs`` images both arms ran on; ``only_a`` / ``only_b`` of them a success in one arm only; ``p``."""

    pairs: int
    only_a: int
    only_b: int
    p: float


def paired_test(a: Mapping[str, bool], b: Mapping[str, bool]) -> PairedTest | None:
    """image → outcome in arm A and in arm B; the exact McNemar test on the images both hold (None if none)."""
    common = [image for image in a if image in b]
    if not common:
        return None
    only_a = sum(bool(a[i]) and not b[i] for i in common)
    only_b = sum(bool(b[i]) and not a[i] for i in common)
    return PairedTest(len(common), only_a, only_b, mcnemar_exact(only_a, only_b))


def comparisons(outcomes: Mapping[tuple[str, str], Mapping[str, bool]],
                pairs: list[tuple[str, str]]) -> list[dict]:
    """(model, arm) → image → outcome; for each model and each (a, b) of ``pairs`` both hold, the paired test
    of a against b: rows {model, a, b, pairs, only_a, only_b, p}."""
    rows = []
    for model in dict.fromkeys(m for m, _ in outcomes):
        for a, b in pairs:
            if (model, a) in outcomes and (model, b) in outcomes:
                test = paired_test(outcomes[model, a], outcomes[model, b])
                if test is not None:
                    rows.append({"model": model, "a": a, "b": b} | asdict(test))
    return rows
