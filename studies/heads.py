"""Heads restricted to k of a model's classes (the class-count study): which k classes an image's head
keeps, and a copy of the model whose head has only those rows."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fakegradient.errors import InvalidArgument
from fakegradient.head import build_head, head_parameters, replace_module, trace_head


def class_subset(k: int, keep: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """(k,) sorted class indices out of ``range(total)``: ``keep`` and k − 1 others drawn uniformly
    without replacement by ``rng``."""
    if not 1 <= k <= total or not 0 <= keep < total:
        raise InvalidArgument(f"need 1 <= k <= total and 0 <= keep < total, got k={k}, keep={keep}, total={total}")
    others = np.delete(np.arange(total), keep)
    return np.sort(np.append(rng.choice(others, size=k - 1, replace=False), keep))


SELECTIONS = ("random", "top")  # how a head's k classes are chosen besides the image's own top-1


def head_classes(selection: str, k: int, logits: torch.Tensor, seed: int, index: int) -> np.ndarray:
    """(k,) sorted class indices of image ``index``'s head, from the full model's clean logits (N,): ``random``
    = its top-1 and k − 1 others drawn by ``numpy.random.default_rng([seed, k, index])``; ``top`` = the k
    classes ranked highest (its top-1 among them). k = N: every class."""
    total = logits.shape[0]
    if selection not in SELECTIONS:
        raise InvalidArgument(f"unknown selection {selection!r}; choose from {', '.join(SELECTIONS)}")
    if k == total:
        return np.arange(total)
    if selection == "top":
        return np.sort(logits.topk(k).indices.cpu().numpy())
    return class_subset(k, int(logits.argmax()), total, np.random.default_rng([seed, k, index]))


def restrict_head(model: nn.Module, classes: np.ndarray, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (eval mode) whose head keeps only the rows ``classes`` (k,), in that order:
    output j of the copy is output ``classes[j]`` of ``model``. ``example_input`` (1, C, H, W) finds the head."""
    restricted = copy.deepcopy(model).eval()
    name = trace_head(restricted, example_input).head
    layer = restricted.get_submodule(name)
    weight, bias = head_parameters(layer)
    rows = torch.as_tensor(np.asarray(classes), dtype=torch.long, device=weight.device)
    return replace_module(restricted, name, build_head(layer, weight[rows], bias[rows]))
