"""Lazy package attributes (PEP 562), so that importing a package stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, exports: dict[str, str], eager: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps an attribute to the submodule
    (relative, e.g. ``".protection"``) that defines it; an attribute mapped to ``""`` is the submodule
    of that name itself. ``eager`` are the names the package defines directly."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where = exports[name]
        if not where:
            return importlib.import_module(f".{name}", package)
        return getattr(importlib.import_module(where, package), name)

    def __dir__() -> list[str]:
        return sorted({*eager, *exports})

    return __getattr__, __dir__
