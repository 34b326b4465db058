"""Reusing the original's black-box run on a scheme that serves the same scores, checked query by query.

A score- or decision-based attack (Square, HopSkipJump) reads the served outputs only through the top-1
position, the label's score and the second-largest score. A scheme whose served outputs are, on every
query the attack sent, the original's logits bit for bit at the real positions, with every fake output
below the second-largest real one and its top-1 at the served position of the original's top-1 (with tied
top scores, argmax picks the first of each order: the same class only if the key keeps their order), makes
all of those the same, so the attack on it sends the same queries and makes the same decisions: its images
and query counts are the original's. A query whose outputs are all NaN on the original must be all NaN on
the scheme; Square reads such a query only through its margin (NaN on both: the candidate is rejected on
both). Random Weight and the hardened scheme are such schemes on natural and attacked images (their fakes
never win); the paper's scheme (fakes win) is not.

The same holds for an attacker that found exactly a scheme's real positions (the query-only attacker of
the paper's scheme, say) and attacks those outputs alone: it reads a permutation of the original's logits,
and Square and HopSkipJump read only values and the top-1's identity, which a permutation maps one to one
(checked as above where top scores tie). :func:`real_outputs` names that candidate; its fakes are not read.

A decision-based attack (HopSkipJump) reads even less: whether each query's top-1 is its image's label. A
query row makes the same decision on both when its top-1 is the same class (the values may differ:
Random Weight's real rows, a product twice as wide as the original's, can be an ulp off), or when neither
top-1 is any of the labels the attack compares against (the original's top-1 on each clean image, at
batch 1, as the attack computes it): a fake that wins on a noise image is "not the label" as surely as
the original's own class. The watcher takes the argmax the attack takes (the first NaN, else the first
maximum), so a NaN row is checked like any other. HopSkipJump's boundary search can reach a query where the
label and another class tie exactly; the key orders them differently from the class index, so the two runs
part there (measured on EfficientNet-Lite0's photos) and the scheme is attacked for real.

:class:`SameScores` watches the original's head while the original is attacked and keeps, for each
candidate scheme, whether that held on every query, computing the scheme's served outputs from the
original's head input with the scheme's own head at the same batch shape (a matrix product per query,
not a forward pass). It then checks, on one recorded input of each batch shape, that the scheme's trunk
gives the original's head input bit for bit and that its served output is its head's output. Any
failure, or a call of the original that its head did not see (an answer that bypasses it, see
:mod:`..runtimes`): the scheme is attacked for real.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch
from torch import nn

ENABLED = True  # off: every scheme is attacked for real (benchmarks/matrix_speed.py compares both)


class SameScores:
    """While active, watches ``original`` (a pipeline ending at its head ``head``) and checks each candidate
    of ``schemes`` (name → (served pipeline, its head's name, (N,) served position of each class, and the
    (M,) served positions the attack reads, ascending, or None: all of them)).
    ``labels`` (L,): the attack reads only whether each query's top-1 is its image's label, one of these
    classes (HopSkipJump): each row needs only the same decision. None: it reads the scores (Square)."""

    def __init__(self, original: nn.Module, head: str,
                 schemes: dict[str, tuple[nn.Module, str, np.ndarray, np.ndarray | None]],
                 labels: torch.Tensor | None = None):
        self.original, self.head, self.labels = original, head, labels
        self.schemes = {m: (served, served.get_submodule(name), *_read(positions, read))
                        for m, (served, name, positions, read) in schemes.items()}
        self.alive = {m for m, (_, module, *_) in self.schemes.items() if module is not original.get_submodule(head)}
        self.inputs: dict[tuple[int, ...], torch.Tensor] = {}  # one pipeline input per batch shape
        self.calls = self.seen = 0  # calls of the pipeline, and of its head: equal if every query was watched
        self._handles: list = []

    def __enter__(self) -> Self:
        self._handles = [self.original.register_forward_pre_hook(self._input),
                         self.original.get_submodule(self.head).register_forward_hook(self._scores)]
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _input(self, _module, inputs) -> None:
        self.calls += 1
        self.inputs.setdefault(tuple(inputs[0].shape), inputs[0].detach().clone())

    @torch.no_grad()
    def _scores(self, _module, inputs, output) -> None:
        self.seen += 1
        if not self.alive:
            return
        features, logits = inputs[0].detach(), output.detach().flatten(1)
        heads: dict[int, torch.Tensor] = {}  # the scheme's served outputs: its head, same batch shape

        def served(method: str) -> torch.Tensor:
            _, module, _, read = self.schemes[method]
            if id(module) not in heads:
                heads[id(module)] = module(features).flatten(1)
            return heads[id(module)] if read is None else heads[id(module)][:, read]

        if self.labels is not None:  # decisions only
            self.alive = {m for m in self.alive if _same_decision(served(m), logits, self.schemes[m][2], self.labels)}
            return
        void = logits.isnan().all(dim=1)  # ART's L2 Square sends NaN images (a 0/0 in its update)
        if logits.shape[1] < 2 or logits[~void].isnan().any():
            self.alive.clear()
            return
        top2, top1 = logits[~void].topk(2, dim=1).values, logits[~void].argmax(dim=1)
        for method in sorted(self.alive):
            out, positions = served(method), self.schemes[method][2]
            if not (bool(out[void].isnan().all()) and _same_top(out[~void], logits[~void], positions, top2[:, 1], top1)):
                self.alive.discard(method)

    @torch.no_grad()
    def verdict(self) -> set[str]:
        """The schemes whose attack is the original's: the per-query condition held and, on one recorded
        input per batch shape, the trunks agree bit for bit and each pipeline ends at its head."""
        if self.seen != self.calls:  # a query the head did not see (an answer that bypasses it)
            return set()
        same = set(self.alive)
        for x in self.inputs.values():
            features, logits = _head_io(self.original, self.original.get_submodule(self.head), x)
            if not torch.equal(self.original(x).flatten(1), logits):
                return set()
            for method in sorted(same):
                served, module, _, _ = self.schemes[method]
                theirs, outputs = _head_io(served, module, x)
                if not (torch.equal(theirs, features) and torch.equal(served(x).flatten(1), outputs)):
                    same.discard(method)
        return same


def real_outputs(method: str) -> str:
    """The candidate of :class:`SameScores` that reads only ``method``'s real positions."""
    return f"{method}, real outputs only"


def _read(positions: np.ndarray, read: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(each class's position among the outputs the attack reads, those outputs' served positions)."""
    positions = np.asarray(positions)
    if read is None:
        return torch.as_tensor(positions).long(), None
    read = np.asarray(read)
    if (np.diff(read) <= 0).any():
        raise ValueError("the outputs the attack reads must be ascending served positions")
    index = np.searchsorted(read, positions)
    if index.max(initial=0) >= len(read) or not np.array_equal(read[index], positions):
        raise ValueError("the outputs the attack reads must include every class's position")
    return torch.as_tensor(index).long(), torch.as_tensor(read).long()


def _same_top(served: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor, bound: torch.Tensor,
              top1: torch.Tensor) -> bool:
    """served (b, M) equals logits (b, N) at ``positions``, is below ``bound`` (b,) elsewhere, and its argmax
    is the served position of ``top1`` (b,), the argmax of ``logits``."""
    positions = positions.to(served.device)
    if not _fits(served, logits, positions) or not torch.equal(served[:, positions], logits) \
            or not torch.equal(served.argmax(dim=1), positions[top1]):
        return False
    fake = torch.ones(served.shape[1], dtype=torch.bool, device=served.device)
    fake[positions] = False
    return not bool(fake.any()) or bool((served[:, fake].amax(dim=1) < bound).all())


def _fits(served: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor) -> bool:
    """``positions`` names one served column of served (b, M) for each class of logits (b, N)."""
    return len(positions) == logits.shape[1] and int(positions.max()) < served.shape[1]


def _same_decision(served: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor,
                   labels: torch.Tensor) -> bool:
    """Each row of served (b, M) and logits (b, N) tells "top-1 is the label" alike for every label in
    ``labels`` (L,): the same class on top, or neither top-1 one of the labels."""
    positions, labels = positions.to(served.device), labels.to(served.device)
    if not _fits(served, logits, positions):
        return False
    top1, top = logits.argmax(dim=1), served.argmax(dim=1)
    neither = ~torch.isin(top1, labels) & ~torch.isin(top, positions[labels])
    return bool(((top == positions[top1]) | neither).all())


def _head_io(pipeline: nn.Module, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(head input, head output) of ``pipeline`` on x (b, C, H, W)."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = head.register_forward_hook(lambda _m, i, o: captured.append((i[0].detach(), o.detach().flatten(1))))
    try:
        pipeline(x)
    finally:
        handle.remove()
    return captured[0]
