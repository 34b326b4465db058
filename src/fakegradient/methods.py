"""The one registry of methods: the unprotected baseline and every protection scheme.

``protect``, the CLI's choices, the evaluation and the report all read :data:`METHODS`; adding a
scheme is one entry here plus its row function in :mod:`fakegradient.core.fake_rows`. Torch-free at
import (the CLI builds its parser from it); the row functions are imported when first called.

Every protection but ``device-head`` hides the real outputs among fake rows; ``device-head`` (``split``) keeps
the head on the device instead (:mod:`fakegradient.split`) and has no fake rows: code that makes fake rows
iterates over :data:`FAKE_ROW_METHODS`, not :data:`PROTECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument

ORIGINAL = "original"


@dataclass(frozen=True)
class Method:
    """One row of the registry.

    ``rows`` names the function in ``core.fake_rows`` that makes the fake rows (W_F (N, D), b_F (N,))
    from the head's (W_o, b_o); it takes ``scale`` when ``takes_scale`` and ``generator`` when
    ``random`` (default: when it takes no scale). ``copies_bias``: b_F = b_o, the paper's text, which
    the evaluation's ``--bias official`` replaces by the released code's bias. ``control``: an
    ablation that asks what in the construction produces the defense (not a protection to deploy).
    ``paper`` holds the paper's Table 1 values, metric → paper column → value, where it has them.
    ``split``: not fake rows but split inference, the cloud serving the features and the device the head.
    """

    name: str
    display: str
    help: str
    rows: str | None = None  # None: the unprotected baseline
    takes_scale: bool = False
    random: bool | None = None  # takes a generator; None: when it takes no scale
    copies_bias: bool = True
    control: bool = False
    in_paper: bool = False  # one of the paper's three columns (the evaluation's default methods)
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    split: bool = False  # the head stays on the device (device-head): no fake rows

    @property
    def protects(self) -> bool:
        return self.rows is not None or self.split

    def fake_rows(self, weight: Any, bias: Any, *, scale: float, generator: Any) -> tuple[Any, Any]:
        """Fake rows (N, D), (N,) for a head (N, D), (N,)."""
        if self.split:
            raise InvalidArgument(f"{self.name!r} keeps the head on the device: it makes no fake rows")
        if self.rows is None:
            raise InvalidArgument(f"{self.name!r} is the unprotected baseline: it makes no fake rows")
        function: Callable = getattr(importlib.import_module(".core.fake_rows", __package__), self.rows)
        random = (not self.takes_scale) if self.random is None else self.random
        if self.takes_scale:
            return function(weight, bias, scale, generator=generator) if random else function(weight, bias, scale)
        return function(weight, bias, generator)


_PAPER_COLUMNS = ("ResNet34", "ResNet18", "DenseNet121", "VGG19", "VGG11", "MobileNet", "GoogLeNet")


def _paper(**rows: list[float]) -> dict[str, dict[str, float]]:
    return {metric: dict(zip(_PAPER_COLUMNS, values)) for metric, values in rows.items()}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method(ORIGINAL, "Original Model", "the unprotected model (the attack's baseline)", in_paper=True,
           paper=_paper(rho_mean=[0.0018, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0018])),
    Method("fake-gradient", "Fake Gradient", "the paper's Algorithm 1: mirrored, scaled fake rows (S_a)",
           rows="fake_gradient_rows", takes_scale=True, in_paper=True,
           paper=_paper(fake_output_pct=[100] * 7, original_functionality_pct=[100] * 7,
                        defense_success_pct=[90.5, 92.1, 94.9, 79.8, 82.9, 87.1, 84.8],
                        rho_mean=[0.0010, 0.0009, 0.0008, 0.0015, 0.0015, 0.0012, 0.0015])),
    Method("random-weight", "Random Weight", "the paper's baseline: Gaussian fake rows fitted to W_o",
           rows="random_weight_rows", in_paper=True,
           paper=_paper(fake_output_pct=[1, 1, 0, 0, 0, 0, 6], original_functionality_pct=[100] * 7,
                        defense_success_pct=[1.2, 11.4, 0, 0, 0, 0, 22.5],
                        rho_mean=[0.0019, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0017])),
    Method("fake-gradient-hardened", "Fake Gradient, hardened (ours)",
           "ours: shuffled mixtures of real rows, no pairing oracle in the file", rows="hardened_rows",
           copies_bias=False),
    Method("scaled-copy", "Scaled Copy (control)", "control: W_F = S_a W_o, b_F = b_o (rejected in the paper's §4.4.1)",
           rows="scaled_copy_rows", takes_scale=True, control=True),
    Method("random-decoy", "Random Decoy (control)",
           "control: random positive rows with Algorithm 1's row norms (S_a), unrelated to W_o",
           rows="random_decoy_rows", takes_scale=True, random=True, control=True),
    Method("device-head", "Device Head (split inference)",
           "split inference: the cloud serves the features, the device keeps the head (W, b) and computes the "
           "logits", copies_bias=False, split=True),
)}

PROTECTIONS = tuple(name for name, m in METHODS.items() if m.protects)  # what protect() accepts
FAKE_ROW_METHODS = tuple(name for name, m in METHODS.items() if m.rows is not None)  # Method.fake_rows works
PAPER_METHODS = tuple(name for name, m in METHODS.items() if m.in_paper)
CONTROLS = tuple(name for name, m in METHODS.items() if m.control)
DEPLOYABLE = tuple(name for name in PROTECTIONS if name not in CONTROLS)  # what `fakegradient protect` offers
PAPER_COLUMNS = _PAPER_COLUMNS


def get(name: str, *, protection: bool = False) -> Method:
    """The registry entry ``name``; ``protection=True`` refuses the unprotected baseline."""
    choices = PROTECTIONS if protection else tuple(METHODS)
    if name not in choices:
        raise InvalidArgument(f"unknown method {name!r}; choose one of {', '.join(choices)}")
    return METHODS[name]


def describe(choices: tuple[str, ...]) -> str:
    """One line per method for a CLI help text."""
    return "; ".join(f"{name}: {METHODS[name].help}" for name in choices)
