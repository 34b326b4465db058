"""What an evaluation compares: the unprotected baseline and every registered scheme (:mod:`fakegradient.schemes`).

``protect``, the CLI's choices, the evaluation and the report read :data:`METHODS`; a scheme is added in the
scheme registry, never here. Torch-free at import (the CLI builds its parser from it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from . import schemes
from .errors import InvalidArgument
from .schemes.base import Scheme
from .schemes.fake_rows import PAPER_COLUMNS, paper_values  # noqa: F401 (PAPER_COLUMNS re-exported)

ORIGINAL = "original"
FAKE_GRADIENT = "fake-gradient"  # the paper's scheme: what the controls are compared with


@dataclass(frozen=True)
class Baseline:
    """The unprotected model: a row of every comparison, the attacks' sanity baseline; protects nothing."""

    name: str = ORIGINAL
    display: str = "Original Model"
    help: str = "the unprotected model (the attack's baseline)"
    control: bool = False
    candidate: bool = False
    in_paper: bool = True
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: paper_values(
        rho_mean=[0.0018, 0.0016, 0.0017, 0.0017, 0.0020, 0.0012, 0.0018]))
    protects: ClassVar[bool] = False


Method = Baseline | Scheme
BASELINE = Baseline()


class _Methods(Mapping[str, Method]):
    """name → entry: the baseline, then the scheme registry as it is now (a scheme registered later appears)."""

    def _entries(self) -> dict[str, Method]:
        return {ORIGINAL: BASELINE, **schemes.registry()}

    def __getitem__(self, name: str) -> Method:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


METHODS: Mapping[str, Method] = _Methods()


def protections() -> tuple[str, ...]:
    """What ``protect()`` accepts: every scheme."""
    return tuple(name for name, m in METHODS.items() if m.protects)


def controls() -> tuple[str, ...]:
    """The ablations: schemes that are not protections to deploy."""
    return tuple(name for name, m in METHODS.items() if m.control)


def deployable() -> tuple[str, ...]:
    """What ``fakegradient protect`` offers: the schemes but the controls and the candidates under study."""
    return tuple(name for name in protections()
                 if not (METHODS[name].control or METHODS[name].candidate))


def paper_methods() -> tuple[str, ...]:
    """The paper's three columns (the evaluation's default methods)."""
    return tuple(name for name, m in METHODS.items() if m.in_paper)


_LIVE = {"PROTECTIONS": protections, "CONTROLS": controls, "DEPLOYABLE": deployable, "PAPER_METHODS": paper_methods}


def __getattr__(name: str) -> tuple[str, ...]:  # the tuples, computed from the registry as it is now
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str, *, protection: bool = False) -> Method:
    """The registry entry ``name``; ``protection=True`` refuses the unprotected baseline."""
    choices = protections() if protection else tuple(METHODS)
    if name not in choices:
        raise InvalidArgument(f"unknown method {name!r}; choose one of {', '.join(choices)}")
    return METHODS[name]


def scheme(name: str) -> Scheme:
    """The scheme ``name`` (not the baseline); :class:`InvalidArgument` otherwise."""
    return get(name, protection=True)  # type: ignore[return-value]


def describe(choices: tuple[str, ...]) -> str:
    """One line per method for a CLI help text."""
    return "; ".join(f"{name}: {METHODS[name].help}" for name in choices)
