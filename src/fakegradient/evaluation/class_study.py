"""What the MNIST study measures beyond Table 1: a head restricted to k of its classes, Table 2 with
many images per class (counts of the winning fake output per real class, and their heatmap), per-model
summary rows with k/n and Wilson intervals, records read back from a stored ``per_image.csv``, and the
small frame the study scripts share (:func:`run_study`, :func:`done_before`)."""

from __future__ import annotations

import copy
import csv
import io
import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_bytes_atomic
from ..errors import FakeGradientError, InvalidArgument
from ..head import build_head, head_parameters, replace_module, trace_head
from .intervals import Rate
from .records import ImageRecord, l2_ratios


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


def fake_output_counts(records: list[ImageRecord], n_real: int) -> np.ndarray:
    """Table 2 with many images per class: (n_real, n_real + 1) counts; row c = the images whose original
    top-1 is c, column j < n_real = the un-permuted top-1 was fake output j (index n_real + j), the last
    column = a real output won. The diagonal is the fake output that mirrors the real class."""
    counts = np.zeros((n_real, n_real + 1), dtype=np.int64)
    for r in records:
        if not 0 <= r.original_top1 < n_real or not 0 <= r.plain_top1 < 2 * n_real:
            raise InvalidArgument(f"{r.image}: top-1 indices out of range for {n_real} classes")
        counts[r.original_top1, r.plain_top1 - n_real if r.plain_top1 >= n_real else n_real] += 1
    return counts


def counts_markdown(counts: np.ndarray) -> list[str]:
    """The count table as markdown lines: one row per real class, one column per fake output."""
    n = counts.shape[0]
    outputs = " | ".join(f"F{j}" for j in range(n))
    lines = [f"| real class \\ winning fake output | {outputs} | a real output | images |",
             "|---|" + "---|" * (n + 2)]
    for c in range(n):
        cells = [f"**{v}**" if j == c and v else str(v) for j, v in enumerate(counts[c])]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {counts[c].sum()} |")
    return lines


def counts_heatmap(path: Path, panels: dict[str, np.ndarray], title: str) -> None:
    """One panel per model: the fraction of each real class's images (rows) won by each fake output
    (columns, and a last one for "a real output"), counts written in the cells."""
    from .figures import panel_grid, save_png  # the Agg backend

    fig, axes = panel_grid(len(panels), 4.2, 4)
    for ax, (name, counts) in zip(axes, panels.items()):
        n = counts.shape[0]
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
        for (c, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, c, str(v), ha="center", va="center", fontsize=6,
                        color="black" if share[c, j] > 0.5 else "white")
        ax.set_xticks(range(n + 1), [str(j) for j in range(n)] + ["real"], fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in range(n)], fontsize=7)
        ax.set_xlabel("winning fake output (un-permuted)")
        ax.set_ylabel("original top-1 class")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title)
    save_png(fig, path)


def rate_text(k: int, n: int) -> str:
    """``"332/500 = 66 % [62–70]"``: k of n with its 95 % Wilson interval."""
    rate = Rate(k, n)
    low, high = rate.ci95_pct
    return f"{k}/{n} = {rate.pct:.0f} % [{low:.0f}–{high:.0f}]"


def aggregate_rate(aggregate: dict, metric: str) -> str:
    """A rate of :func:`records.aggregate`'s output as :func:`rate_text`; "—" when it has none."""
    n = aggregate.get(f"{metric}_n") or 0
    return rate_text(aggregate[f"{metric}_k"], n) if n else "—"


_PARSERS = {"str": str, "int": int, "float": float, "bool": lambda v: v == "True",
            "int | None": lambda v: None if v in ("", "None") else int(v)}


def records_from_csv(path: Path) -> list[ImageRecord]:
    """The :class:`ImageRecord` rows of a stored ``per_image.csv`` (extra columns ignored; columns the
    file predates, e.g. ``rho_normalized``, keep their defaults)."""
    types = {f.name: _PARSERS[str(f.type)] for f in fields(ImageRecord)}  # annotations are strings there
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [ImageRecord(**{name: parse(row[name]) for name, parse in types.items() if name in row})
                for row in rows]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise FakeGradientError(f"cannot read records from {path}: {exc}") from None


def write_records_csv(path: Path, records: list[ImageRecord]) -> None:
    """``per_image.csv`` as the evaluation writes it: every record field, ``functionality``,
    ``defense_success`` and ``l2_ratio_to_original`` (‖r‖₂ here / ‖r‖₂ on the original model, same image;
    nan for the original)."""
    buffer = io.StringIO()
    names = [f.name for f in fields(ImageRecord)] + ["functionality", "defense_success", "l2_ratio_to_original"]
    writer = csv.DictWriter(buffer, fieldnames=names)
    writer.writeheader()
    for record, ratio in zip(records, l2_ratios(records)):
        writer.writerow(asdict(record) | {"functionality": record.functionality,
                                          "defense_success": record.defense_success, "l2_ratio_to_original": ratio})
    write_bytes_atomic(path, buffer.getvalue().encode())


def same_target_as_original(records: list[ImageRecord], method: str = "fake-gradient") -> tuple[int, int]:
    """Among the images ``method`` loses (per model), how many end on the same real class as the attack on
    the unprotected model (same model, same image): (that count, images lost with an original record)."""
    target = {(r.model, r.image): r.adversarial_top1 for r in records if r.method == "original"}
    lost = [r for r in records if r.method == method and not r.defense_success and (r.model, r.image) in target]
    return sum(r.adversarial_top1 == target[(r.model, r.image)] for r in lost), len(lost)


def done_before(folder: Path) -> bool:
    """Whether a study run's ``folder`` is complete (its ``run.json``, written last, exists); says so if it is."""
    done = (folder / "run.json").is_file()
    if done:
        print(f"{folder}: done before, kept")
    return done


def run_study(work: Callable[[], Path]) -> int:
    """A study script's ``main``: run ``work`` (returns the report written), print it; a bad option or value is
    one line on stderr and exit 2."""
    try:
        print(f"report: {work()}")
    except (FakeGradientError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

