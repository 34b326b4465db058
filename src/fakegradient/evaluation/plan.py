"""Evaluation work as pure data: shards — (model, method, slice of images, stage) — and their results.

A stage (``evaluation/stages``) computes a shard the same way on the driver and on Ray workers.
Stages run in rounds: ``deepfool`` (Table 1/2) and ``transfer``, then ``adaptive``, whose shards
carry the budgets the first round determined. An adaptive shard of a scheme reuses what the original's shard
of the same images memoised in that worker (:func:`groups`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..methods import ORIGINAL


@dataclass(frozen=True)
class Shard:
    model: str  # name[:weights]
    method: str  # for "transfer": "original", the model the attacker uses
    start: int  # image indices [start, stop)
    stop: int
    stage: str = "deepfool"
    budgets: tuple[tuple[str, float], ...] = ()  # an adaptive shard's budgets, from earlier shards
    attackers: tuple[str, ...] = ()  # an adaptive shard's attacker registry: a stored shard of other code is redone

    @property
    def id(self) -> str:
        model = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)
        stage = "" if self.stage == "deepfool" else f"{self.stage}-"
        return f"{model}__{stage}{self.method}__{self.start:07d}-{self.stop:07d}"

    def __len__(self) -> int:
        return self.stop - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        return cls(**data | {"budgets": tuple((k, v) for k, v in data["budgets"]),
                             "attackers": tuple(data.get("attackers", ()))})


@dataclass
class ShardResult:
    """What a shard yields: its records as dicts (ImageRecord or AttackerRecord fields), the
    perturbations of heatmap images (k, C, H, W) if any, and stage-specific values."""

    records: list[dict[str, Any]]
    perturbation: np.ndarray | None = None
    values: dict[str, Any] = field(default_factory=dict)


def plan(model: str, methods: list[str], n_images: int, shard_size: int, stage: str = "deepfool",
         budgets: dict[str, dict[str, float]] | None = None, attackers: tuple[str, ...] = ()) -> list[Shard]:
    """Shards of ``shard_size`` images for each method; ``budgets[method]`` and ``attackers`` go into its shards."""
    return [Shard(model, method, start, min(start + shard_size, n_images), stage,
                  tuple(sorted((budgets or {}).get(method, {}).items())), attackers)
            for method in methods for start in range(0, n_images, shard_size)]


def groups(shards: list[Shard]) -> list[list[Shard]]:
    """``shards`` in groups that one worker runs in order: the adaptive shards of one model and image slice
    together, the original's first (the schemes' shards reuse its memoised runs: the feature-space images,
    black-box runs with provably the same scores); any other shard alone. Groups in first-shard order."""
    out: dict[tuple, list[Shard]] = {}
    for shard in shards:
        key = (shard.model, shard.start, shard.stop) if shard.stage == "adaptive" else (shard,)
        out.setdefault(key, []).append(shard)
    return [sorted(group, key=lambda s: s.method != ORIGINAL) for group in out.values()]


def group_to_json(group: list[Shard]) -> str:
    """A group of :func:`groups` as one JSON list (a Ray Data row)."""
    return json.dumps([asdict(shard) for shard in group])


def group_from_json(text: str) -> list[Shard]:
    """The group :func:`group_to_json` wrote."""
    return [Shard.from_dict(shard) for shard in json.loads(text)]
