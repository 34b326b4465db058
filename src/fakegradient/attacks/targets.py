"""What an attacker differentiates through, built from the served model alone (no key).

- the served model: its 2N outputs as they are;
- :class:`OutputRows`: "on recovered rows", the served model with its head cut down to the rows a key
  recovery attacker named real (the head produces the outputs directly, so keeping rows = keeping outputs);
- :func:`pair_hypotheses`: candidate sets of real rows for the EOT-style attack (:class:`~.pgd.L2PGD`
  with ``candidates``), e.g. one row of each (real, fake) pair drawn at random.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument


class OutputRows(nn.Module):
    """``served(x)[:, positions]``: logits (B, len(positions)) of the rows at ``positions`` (served order)."""

    def __init__(self, served: nn.Module, positions: np.ndarray | torch.Tensor):
        super().__init__()
        self.served = served
        self.register_buffer("positions", torch.as_tensor(np.asarray(positions), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.served(x)[:, self.positions]


def pair_hypotheses(pairs: np.ndarray, count: int, generator: np.random.Generator) -> np.ndarray:
    """``count`` candidate real-row sets (count, P) from P row pairs (P, 2): one row of each pair, drawn
    uniformly and independently per pair (the attacker knows the pairs, not which row is real)."""
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or count < 1:
        raise InvalidArgument(f"pair_hypotheses needs pairs (P, 2) and count >= 1, got {pairs.shape}, {count}")
    choice = generator.integers(0, 2, size=(count, len(pairs)))
    return pairs[np.arange(len(pairs)), choice]
