"""The registry of protection schemes and of the secrets devices keep.

A scheme is a module here that defines a :class:`Scheme` (torch side, torch imported only when it protects)
and, for a new kind of secret, a :class:`Secret` (numpy side), and registers them next to their definition
with :func:`register` and :func:`register_secret`. The built-in modules are listed in :data:`MODULES` and
imported on first use; they register with ``origin=__name__``, which lists them first, in :data:`MODULES`
order, whichever of them was imported first. :func:`load_secret` is the one door for any secret file.
Torch-free at import.
"""

from __future__ import annotations

import importlib
import itertools
import os

from ..errors import InvalidArgument, KeyFileError
from .base import SNIFF_BYTES, Capabilities, Scheme, Secret

MODULES = (".fake_rows", ".split", ".decoys", ".mixing")  # the built-in scheme modules, in registry order

_SCHEMES: dict[str, Scheme] = {}
_SECRETS: dict[str, type[Secret]] = {}
_RANKS: dict[str, tuple[int, int]] = {}  # name → (its built-in module's index, else len(MODULES); serial)
_sequence = itertools.count()
_loaded = False

__all__ = ["MODULES", "Capabilities", "Scheme", "Secret", "get", "load_secret", "register", "register_secret",
           "registry", "secret_from_bytes", "secret_types"]


def register(scheme: Scheme, *, origin: str = "") -> Scheme:
    """Add ``scheme`` to the registry (a name is registered once) and its secret type; returns it.

    ``origin`` is the registering module's ``__name__``: a built-in module's schemes are listed first, in
    :data:`MODULES` order whatever was imported first; any other registration after them, in registration
    order.
    """
    if _SCHEMES.get(scheme.name, scheme) is not scheme:
        raise InvalidArgument(f"a scheme named {scheme.name!r} is already registered")
    built_in = [__name__ + module for module in MODULES]
    rank = built_in.index(origin) if origin in built_in else len(MODULES)
    _SCHEMES[scheme.name] = scheme
    _RANKS.setdefault(scheme.name, (rank, next(_sequence)))
    register_secret(scheme.secret_type)
    return scheme


def unregister(name: str) -> None:
    """Remove a scheme (tests, plug-ins); its secret type stays readable."""
    _SCHEMES.pop(name, None)
    _RANKS.pop(name, None)


def register_secret(secret_type: type[Secret]) -> type[Secret]:
    """Make :func:`load_secret` read files of ``secret_type.FORMAT``; returns the type (usable as a decorator)."""
    _SECRETS.setdefault(secret_type.FORMAT, secret_type)
    return secret_type


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(module, __name__)


def registry() -> dict[str, Scheme]:
    """name → scheme (a copy): the built-ins in :data:`MODULES` order, then the others in registration
    order."""
    _load_builtins()
    return dict(sorted(_SCHEMES.items(), key=lambda item: _RANKS[item[0]]))


def get(name: str) -> Scheme:
    """The scheme ``name``; :class:`InvalidArgument` naming the choices otherwise."""
    schemes = registry()
    if name not in schemes:
        raise InvalidArgument(f"unknown method {name!r}; choose one of {', '.join(schemes)}")
    return schemes[name]


def secret_types() -> dict[str, type[Secret]]:
    """format → secret type, for every registered kind of secret."""
    _load_builtins()
    return dict(_SECRETS)


def sniff(prefix: bytes) -> type[Secret] | None:
    """The secret type whose format a file starting with ``prefix`` declares, else None."""
    return next((kind for kind in secret_types().values() if kind.sniff(prefix)), None)


def secret_from_bytes(data: bytes, source: str = "secret") -> Secret:
    """Parse any registered secret from its bytes; :class:`KeyFileError` if none recognises them."""
    kind = sniff(data)
    if kind is None:
        raise KeyFileError(f"{source} is not a fakegradient key or device-head file")
    return kind.from_bytes(data, source)


def load_secret(path: str | os.PathLike) -> Secret:
    """What a device keeps for one model, whatever its scheme: the file's declared format picks the type."""
    from ..secret_files import open_regular

    try:
        with open_regular(path) as handle:
            prefix = b"" if handle is None else handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    kind = sniff(prefix)
    if kind is None:  # the default type's loader gives the precise one-line error (not a file, not JSON, …)
        from ..key import Key

        kind = Key
    return kind.load(path)

