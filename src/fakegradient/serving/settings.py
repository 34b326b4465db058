"""The server's settings, each a frozen dataclass that validates itself: :class:`Limits` (what clients may take),
:class:`Batching` (dynamic batching), :class:`RuntimeOptions` (ONNX Runtime), :class:`Observability` (metrics and
the access log), :class:`Access` (who may ask what).

Every field of the first four carries its CLI help, flag and unit (:func:`setting`): ``fakegradient serve``
builds its flags from them (:func:`add_flags`, :func:`from_flags`), so each default is written here only.
Stdlib only: the CLI reads these without the server's dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..errors import InvalidArgument

MIB, KIB = 2**20, 2**10


def setting(default: Any, help: str, *, flag: str | None = None, unit: float = 1, above: float | None = None,
            at_least: float | None = None, choices: tuple[str, ...] | None = None, negatable: bool = False) -> Any:
    """A dataclass field with its CLI flag (``--name-with-dashes`` unless ``flag``), ``unit`` (field value =
    flag value x unit: MiB given in bytes, ms in seconds) and its valid range (``above``: exclusive, ``at_least``:
    inclusive lower bound; numbers must be finite; ``choices``: the allowed strings)."""
    meta = {"help": help, "flag": flag, "unit": unit, "above": above, "at_least": at_least, "choices": choices,
            "negatable": negatable}
    return field(default=default, metadata=meta)


class SettingError(InvalidArgument):
    """A setting out of its range. Names the field (``Limits.max_inflight``); :func:`from_flags` names the
    flag and shows the values in the flag's unit instead (:meth:`describe`)."""

    def __init__(self, owner: str, name: str, value: Any, need: str, bound: float | None = None,
                 other: str | None = None) -> None:
        self.owner, self.name, self.value, self.need, self.bound, self.other = owner, name, value, need, bound, other
        super().__init__(self.describe(lambda n: f"{owner}.{n}", lambda n: 1))

    def describe(self, name_of, unit_of) -> str:
        """The message with each field called ``name_of(field)`` and its values divided by ``unit_of(field)``."""
        unit = unit_of(self.name)

        def scaled(number: float) -> str:
            return _shown(number if unit == 1 else number / unit)

        bound = "" if self.bound is None else f" {scaled(self.bound)}"
        other = "" if self.other is None else f" {name_of(self.other)}"
        value = scaled(self.value) if _is_number(self.value) else repr(self.value)
        return f"{name_of(self.name)} must be {self.need}{bound}{other}, got {value}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_fields(obj: Any) -> None:
    """Raise :class:`SettingError` for the first field of the dataclass ``obj`` outside its declared range."""
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        meta, value, default = f.metadata, getattr(obj, f.name), f.default
        if "help" not in meta:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise SettingError(owner, f.name, value, "true or false")
        elif meta["choices"] is not None:
            if value not in meta["choices"]:
                raise SettingError(owner, f.name, value, "one of " + ", ".join(meta["choices"]))
        elif isinstance(default, (int, float)):
            integer = isinstance(default, int)
            if not _is_number(value) or (integer and not isinstance(value, int)) or not math.isfinite(value):
                raise SettingError(owner, f.name, value, "an integer" if integer else "a finite number")
            if meta["above"] is not None and not value > meta["above"]:
                raise SettingError(owner, f.name, value, ">", meta["above"])
            if meta["at_least"] is not None and not value >= meta["at_least"]:
                raise SettingError(owner, f.name, value, ">=", meta["at_least"])


@dataclass(frozen=True)
class Limits:
    """What one client, or all of them together, may take of the server."""

    max_body_bytes: int = setting(64 * MIB, "largest request body in MiB (~21 images of 3x224x224 as JSON, ~110 "
                                            "as binary data)", flag="--max-body-mb", unit=MIB, above=0)
    max_buffered_bytes: int = setting(256 * MIB, "request bodies held at once, all connections together, in MiB, "
                                                 "charged as their bytes arrive; when full, a body within its fair "
                                                 "share (this / bodies held) takes the room of the one most over "
                                                 "its share (dropped: 503), else 503 + Retry-After (at least "
                                                 "--max-body-mb)", flag="--max-buffered-mb", unit=MIB, above=0)
    max_batch: int = setting(64, "largest batch accepted", above=0)
    max_inflight: int = setting(32, "requests in progress (parsed, queued for or in inference); more get 503 + "
                                    "Retry-After", above=0)
    max_runs: int = setting(2, "ONNX Runtime runs at once; their memory grows with it", above=0)
    max_connections: int = setting(256, "open connections; beyond, those idle the longest are closed", above=0)
    header_timeout: float = setting(10.0, "seconds a client has to send a request's head, from connecting or "
                                          "the previous answer", above=0)
    max_head_bytes: int = setting(16 * KIB, "a request's head (URL and headers) in KiB; 431 or 400 and closed "
                                            "beyond", flag="--max-head-kb", unit=KIB, above=0)
    max_header_fields: int = setting(100, "header lines in a request's head; 431 and closed beyond", above=0)
    body_timeout: float = setting(30.0, "seconds a client has to send a request's body; 408 beyond", above=0)
    keep_alive: float = setting(5.0, "seconds an idle connection stays open between requests", above=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_buffered_bytes < self.max_body_bytes:  # no request of the largest size could ever be read
            raise SettingError("Limits", "max_buffered_bytes", self.max_buffered_bytes, ">=", None,
                               "max_body_bytes")


@dataclass(frozen=True)
class Batching:
    """``enabled``: batch concurrent requests (off by default: on CPUs, MobileNetV2-sized models run no faster
    per image in batches, see benchmarks/serving.py); ``max_rows``: most rows (images) in one run (a larger
    request runs alone); ``max_delay``: seconds a free runner waits for more requests after the first."""

    enabled: bool = setting(False, "run concurrent requests as one ONNX Runtime call; pays where larger batches "
                                   "run faster per image (see benchmarks/serving.py), not for small models on a "
                                   "few CPU cores", flag="--dynamic-batching", negatable=True)
    max_rows: int = setting(16, "dynamic batching: most images in one run", flag="--batch-rows", above=0)
    max_delay: float = setting(0.001, "dynamic batching: ms a free runner waits for more requests",
                               flag="--batch-delay-ms", unit=1e-3, at_least=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime settings. Without the CPU arena (the default) the memory of a run goes back when the
    run ends; with it, large batches run faster but ORT keeps the peak of the concurrent runs for good."""

    threads: int = setting(0, "ONNX Runtime intra-op threads per run (0 = the usable cores divided among "
                              "--max-runs, at least 1)", at_least=0)
    cpu_arena: bool = setting(False, "keep ONNX Runtime's CPU memory arena: large batches run faster, but the "
                                     "memory of peak loads is never returned")
    device: str = setting("cpu", "ONNX Runtime execution provider: cpu, or cuda (needs onnxruntime-gpu; refused "
                                 "if ONNX Runtime cannot start it)", choices=tuple(defaults.ORT_PROVIDERS))

    def __post_init__(self) -> None:
        check_fields(self)

    def for_runs(self, runs: int) -> RuntimeOptions:
        """These options with ``threads`` 0 resolved for ``runs`` ONNX Runtime runs at once: the usable cores
        divided among them (at least 1). ONNX Runtime's own 0 gives every run all cores, and concurrent runs
        then oversubscribe them (MobileNetV2 on 2 cores, 2 runs: served 88-97 images/s with 2 threads per run,
        115-124 with 1; benchmarks/serving.py --threads)."""
        if self.threads:
            return self
        return dataclasses.replace(self, threads=max(1, usable_cores() // runs))


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Observability:
    """What the server records of each request: ``metrics``: Prometheus counts and latencies at ``GET /metrics``
    (off: nothing is counted and ``/metrics`` answers 404); ``access_log``: one line per request on stderr."""

    metrics: bool = setting(True, "count requests, statuses, latencies, refusals and batch sizes for Prometheus at "
                                  "GET /metrics; --no-metrics: nothing counted, /metrics answers 404",
                            negatable=True)
    access_log: bool = setting(False, "log one line per request to stderr: peer, operation, path or model, status, "
                                      "time (never a payload or a token)")

    def __post_init__(self) -> None:
        check_fields(self)


PUBLIC_METADATA = ("minimal", "full")
MINIMAL_PARAMETERS = ("fingerprint", "preprocess")  # what the device client needs, nothing more


@dataclass(frozen=True)
class Access:
    """Who may ask what. ``public_metadata``: ``minimal`` publishes only the model parameters the device
    client needs (fingerprint, preprocessing), ``full`` also the architecture, the class names, the output
    count and the model's digest. ``token``: when set, every endpoint but ``/v2/health/*`` needs
    ``Authorization: Bearer <token>`` (401 otherwise). ``cors_origins``: the web origins (``scheme://host[:port]``,
    as :func:`cors_origin` writes them) whose pages a browser lets call the server; none: no page of another
    origin may (no CORS headers at all). Each is checked and written as a browser sends it."""

    public_metadata: str = "minimal"
    token: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.public_metadata not in PUBLIC_METADATA:
            raise SettingError("Access", "public_metadata", self.public_metadata,
                               "one of " + ", ".join(PUBLIC_METADATA))
        object.__setattr__(self, "cors_origins", tuple(dict.fromkeys(map(cors_origin, self.cors_origins))))

    def public(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Those of a model's ``parameters`` this setting publishes."""
        if self.public_metadata == "full":
            return parameters
        return {k: v for k, v in parameters.items() if k in MINIMAL_PARAMETERS}


def cors_origin(text: str) -> str:
    """An origin a browser sends (``scheme://host[:port]``: lower case, no default port, no path) from what an
    operator typed; :class:`InvalidArgument` for anything else ("*" included: name each origin)."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"CORS origin {text!r} is not an origin: {exc}") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise InvalidArgument(f"CORS origin {text!r} is not an origin: give scheme://host[:port], e.g. "
                              "http://127.0.0.1:8080 (the address the page is opened at)")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


# --- the CLI's flags, from the fields -------------------------------------------------------------------


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return flag_of(f)[2:].replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the settings class ``cls``, with its help and default (in the flag's unit)."""
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, f.default
        if "help" not in meta:
            continue
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
            state = "on" if default else "off"
            parser.add_argument(flag_of(f), action=action, default=default, help=f"{meta['help']} (default: {state})")
            continue
        shown = default / meta["unit"] if meta["unit"] != 1 else default
        if isinstance(shown, float) and shown.is_integer() and isinstance(default, int):
            shown = int(shown)
        kind = float if meta["unit"] != 1 else type(default)
        parser.add_argument(flag_of(f), type=kind, default=shown, choices=meta["choices"],
                            help=f"{meta['help']} (default: {_shown(shown)})")


def from_flags(cls: type, args: argparse.Namespace) -> Any:
    """The ``cls`` of the parsed flags that :func:`add_flags` made; :class:`InvalidArgument` naming the flag
    (values in its unit) for a value out of range."""
    flags = {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}
    values = {}
    for name, f in flags.items():
        value, unit = getattr(args, _dest(f)), f.metadata["unit"]
        if unit != 1:
            if not math.isfinite(value):
                raise InvalidArgument(f"{flag_of(f)} must be a finite number, got {value}")
            value = value * unit
            if isinstance(f.default, int):
                value = int(value)
        values[name] = value
    try:
        return cls(**values)
    except SettingError as exc:
        raise InvalidArgument(exc.describe(lambda n: flag_of(flags[n]), lambda n: flags[n].metadata["unit"])) \
            from None
