"""Binomial confidence intervals for the report's rates (pure, stdlib only).

Every rate of Table 1 is k successes out of n images; we report the **Wilson score interval**
(Wilson 1927) at 95 %: it stays inside [0, 1], is not degenerate at k = 0 or k = n (unlike the
Wald interval), and is what ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` and
``statsmodels.stats.proportion.proportion_confint(k, n, method="wilson")`` return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidArgument

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
METHOD = "Wilson score, 95 %"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (low, high) for k successes in n trials, as proportions in [0, 1]."""
    if n < 1 or not 0 <= k <= n:
        raise InvalidArgument(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact at the ends (the formula gives 0 / 1 up to rounding there)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """k of n, its percentage and its 95 % Wilson interval in percent."""

    k: int
    n: int

    @property
    def pct(self) -> float:
        return 100.0 * self.k / self.n

    @property
    def ci95_pct(self) -> tuple[float, float]:
        low, high = wilson(self.k, self.n)
        return 100.0 * low, 100.0 * high

    def contains(self, pct: float) -> bool:
        """Whether a percentage (e.g. the paper's) lies inside the 95 % interval."""
        low, high = self.ci95_pct
        return low - 1e-9 <= pct <= high + 1e-9

    def text(self, digits: int = 0) -> str:
        """``"85 [64–95] n=20"``."""
        low, high = self.ci95_pct
        return f"{self.pct:.{digits}f} [{low:.0f}–{high:.0f}] n={self.n}"
