"""An attacker's roofline: the forward and backward passes it made, counted, then each kind timed alone.

:class:`Passes` counts, on watched pipelines, forward calls without a graph (``fwd``), forward calls
building one (``fwd_grad``) and backward passes that reach the pipeline's input (``bwd``), with their
input shapes. :class:`PassTimes` times one pass of each (pipeline, input shape, kind) alone on the same
model (the median of a few repetitions, once per worker), so ``roofline = Σ passes × time of one pass``:
the unavoidable work for the queries and iterations the attack ran, and ``roofline / wall`` its
fraction (1: nothing but passes; the rest is ART/foolbox/Python bookkeeping, numpy, hashing).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Self

import torch
from torch import nn

KINDS = ("fwd", "fwd_grad", "bwd")
Key = tuple[str, tuple[int, ...], str]  # (pipeline name, input shape, kind)


class Passes:
    """Counts ``counts[(pipeline, input shape, kind)]`` on ``pipelines`` (name → module) while open.
    Use as a context manager (hooks removed on exit); :meth:`paused` stops counting (e.g. while timing)."""

    def __init__(self, pipelines: dict[str, nn.Module]):
        self.pipelines = pipelines
        self.counts: Counter = Counter()
        self._handles: list = []
        self._paused = False

    def __enter__(self) -> Self:
        self._handles = [p.register_forward_hook(self._hook(name)) for name, p in self.pipelines.items()]
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        was, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = was

    def _hook(self, name: str):
        def hook(_module, inputs, output):
            x = inputs[0] if inputs else None
            if self._paused or not isinstance(x, torch.Tensor):
                return
            key = (name, tuple(x.shape))
            if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
                self.counts[(*key, "fwd_grad")] += 1
                if x.requires_grad:
                    x.register_hook(lambda g: self._backward(key))
            else:
                self.counts[(*key, "fwd")] += 1
        return hook

    def _backward(self, key: tuple[str, tuple[int, ...]]) -> None:
        if not self._paused:
            self.counts[(*key, "bwd")] += 1


class PassTimes:
    """Seconds of one pass of each (pipeline, input shape, kind), timed alone on random inputs in [0, 1):
    the median of up to ``repeats`` timed calls (one untimed call first where more than one), in the
    fastest of ``layouts`` (4-d inputs); the samples are kept, so a later row needing more adds to them.
    A backward pass is (forward + backward) − forward with a graph."""

    def __init__(self, pipelines: dict[str, nn.Module], repeats: int = 3,
                 layouts: tuple[torch.memory_format, ...] = (torch.contiguous_format,),
                 device: torch.device | str = "cpu"):
        self.pipelines, self.repeats, self.layouts, self.device = pipelines, repeats, layouts, torch.device(device)
        self.samples: dict[tuple, list[float]] = {}  # (pipeline, shape, layout, grad, backward) → seconds

    def cost(self, name: str, shape: tuple[int, ...], kind: str, uses: int | None = None) -> float:
        """One pass of ``kind`` on ``pipelines[name]`` at input ``shape``. ``uses``: how many such passes the
        row ran; at most that many calls are timed (a pass the attack made once costs one pass to time)."""
        if kind not in KINDS:
            raise ValueError(f"pass kind {kind!r}: one of {KINDS}")
        want = self.repeats if uses is None else max(1, min(self.repeats, uses))
        if kind == "bwd":
            return max(self._best(name, shape, True, True, want) - self._best(name, shape, True, False, want), 0.0)
        return self._best(name, shape, kind == "fwd_grad", False, want)

    def _best(self, name: str, shape: tuple[int, ...], grad: bool, backward: bool, want: int) -> float:
        medians = []
        for layout in self.layouts if len(shape) == 4 else (torch.contiguous_format,):
            samples = self.samples.setdefault((name, shape, layout, grad, backward), [])
            if not samples and want > 1:  # warm-up: a new shape's first call sets up kernels and buffers
                self._once(name, shape, layout, grad, backward)
            samples += [self._once(name, shape, layout, grad, backward) for _ in range(want - len(samples))]
            medians.append(statistics.median(samples))
        return min(medians)

    def _once(self, name: str, shape: tuple[int, ...], layout, grad: bool, backward: bool) -> float:
        x = torch.rand(shape, device=self.device).contiguous(memory_format=layout).requires_grad_(grad)
        self._sync()
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = self.pipelines[name](x)
            if backward:
                torch.autograd.grad(out.float().sum(), x)
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, counts: Counter) -> float:
        """Σ count × one pass's seconds over ``counts`` (a :attr:`Passes.counts`)."""
        return sum(n * self.cost(name, shape, kind, uses=n) for (name, shape, kind), n in counts.items())


def summary(counts: Counter) -> dict[str, list[int]]:
    """kind → [calls, rows] summed over pipelines and shapes (rows: the inputs' first dimension)."""
    out = {kind: [0, 0] for kind in KINDS}
    for (_, shape, kind), n in counts.items():
        out[kind][0] += n
        out[kind][1] += n * (shape[0] if shape else 1)
    return out


def fraction(roofline_s: float | None, wall_s: float | None) -> float | None:
    """roofline / wall; None where nothing was run (no passes or no time)."""
    if not roofline_s or not wall_s or wall_s <= 0:
        return None
    return roofline_s / wall_s
