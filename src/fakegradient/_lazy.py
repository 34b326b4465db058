"""Lazy package attributes (PEP 562), so that importing a package stays light, and which extra
(``pip install 'fakegradient[EXTRA]'``) provides a module that is not installed."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
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
        try:
            if not where:
                return importlib.import_module(f".{name}", package)
            return getattr(importlib.import_module(where, package), name)
        except ModuleNotFoundError as exc:  # an optional dependency: name the extra, not the module
            raise as_missing_extra(exc, f"{package}.{name}") from None

    def __dir__() -> list[str]:
        return sorted({*eager, *exports})

    return __getattr__, __dir__


# --- optional dependencies: which extra of ``pip install 'fakegradient[EXTRA]'`` provides a module ---

_MODULE_OF = {"adversarial_robustness_toolbox": "art", "scikit_learn": "sklearn", "pillow": "PIL",
              "grpcio": "grpc", "protobuf": "google"}  # ≠ its name
_REQUIREMENT = re.compile(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*;\s*extra\s*==\s*"([^"]+)"')


def _extras() -> dict[str, set[str]]:
    """extra → the top-level module names it installs (transitively), from the installed package's
    metadata: pyproject.toml stays the only list. Empty when the metadata cannot be read."""
    try:
        requires = importlib.metadata.requires("fakegradient") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    direct: dict[str, set[str]] = {}
    includes: dict[str, set[str]] = {}
    for line in requires:
        match = _REQUIREMENT.match(line)
        if not match:
            continue
        name, nested, extra = match.groups()
        if name.lower().replace("_", "-") == "fakegradient":
            includes.setdefault(extra, set()).update(e.strip() for e in (nested or "").split(","))
        else:
            module = name.lower().replace("-", "_").replace(".", "_")  # distribution → module
            direct.setdefault(extra, set()).add(_MODULE_OF.get(module, module))
    def closure(extra: str, seen: set[str]) -> set[str]:
        seen.add(extra)
        found = set(direct.get(extra, ()))
        for other in includes.get(extra, ()):
            if other not in seen:
                found |= closure(other, seen)
        return found

    return {extra: closure(extra, set()) for extra in direct.keys() | includes.keys()}


def install_command(extra: str) -> str:
    """How to install ``extra`` (the package is not on PyPI: from a clone of its repository)."""
    return f"in a clone of fakegradient, pip install '.[{extra}]'"


def missing_message(what: str, extra: str) -> str:
    """One line: ``what`` needs ``extra``, and the command that installs it."""
    return f"{what} needs the [{extra}] extra: {install_command(extra)}"


# the extra a sub-package needs (the rest of the package needs [protect]'s torch, or nothing)
_EXTRA_OF_PACKAGE = {"fakegradient.serving": "serve", "fakegradient.evaluation": "eval", "fakegradient.attacks": "eval"}


def as_missing_extra(exc: ModuleNotFoundError, what: str, wanted: str | None = None) -> ModuleNotFoundError:
    """``exc`` as a :class:`~fakegradient.errors.MissingExtra` naming the extra that provides its module
    (``wanted``, by default the extra of ``what``'s sub-package, when the module is one of that extra's, even deep
    in a dependency); ``exc`` itself when no extra provides the module (a real bug), or when it already is one."""
    from .errors import MissingExtra

    if isinstance(exc, MissingExtra):
        return exc
    if wanted is None:
        wanted = next((extra for package, extra in _EXTRA_OF_PACKAGE.items()
                       if what == package or what.startswith(package + ".")), "protect")
    extra = missing_extra(exc.name, wanted)
    if extra is None:
        return exc
    return MissingExtra(missing_message(what, extra), name=exc.name)


def missing_extra(module: str | None, wanted: str) -> str | None:
    """The extra that provides the missing ``module``: ``wanted`` (the command's own) when it does, else the
    smallest extra that does; None when no extra provides it (then the missing module is a real bug)."""
    root = (module or "").split(".")[0]
    extras = _extras()
    if not extras:  # metadata unreadable (a source checkout on sys.path): trust the command's extra
        return wanted
    if root in extras.get(wanted, ()):
        return wanted
    candidates = [extra for extra, modules in extras.items() if root in modules and extra not in ("all", "dev")]
    if candidates:
        return min(candidates, key=lambda extra: len(extras[extra]))
    # a dependency of a dependency (anyio for fastapi): the command's extra, if it is not all installed
    return wanted if any(importlib.util.find_spec(m) is None for m in extras.get(wanted, ())) else None
