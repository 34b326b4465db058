"""The cloud bundle's self-description, in one place: :class:`ModelInfo` (what model.pt stores) and the
``fakegradient.*`` metadata of model.onnx (what the server publishes), written by :func:`to_props` and read by
:func:`read_props`. Public data only: nothing here reveals a secret. Stdlib only (servers and clients read it).

Format versions: 1 (no version recorded; a trunk declared its method only), 2 (every file records its version,
method and output). A file of a newer version is refused in one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelFileError

MODEL_FORMAT = "fakegradient-model"
BUNDLE_VERSION = 2
PREFIX = "fakegradient."
VERSION_KEY = PREFIX + "format_version"
JSON_FIELDS = ("preprocess", "categories")  # stored JSON-encoded: metadata values are strings
PUBLIC_FIELDS = ("fingerprint", "arch", "n_outputs", "method", "output", "digest", *JSON_FIELDS)


@dataclass
class ModelInfo:
    """What a protected-model file says about itself. ``n_outputs`` is the served width (2N logits, or D
    features), ``output`` its name in model.onnx (``logits`` or ``features``), ``method`` the scheme."""

    arch: str  # a registry name (model.pt can be reloaded), else the module's class name
    head: str
    n_real: int
    fingerprint: str
    n_outputs: int
    input_size: list[int] = field(default_factory=lambda: [3, 224, 224])
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    method: str = "fake-gradient"
    output: str = "logits"
    extra: dict[str, Any] = field(default_factory=dict)  # public, for clients: preprocess, categories

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], version: int, source: str) -> ModelInfo:
        """From a model.pt's stored dict (version 1 files recorded ``n_features`` for a trunk instead)."""
        data = dict(data)
        if version == 1:
            n_features = data.pop("n_features", None)
            data |= {"n_outputs": 2 * data.get("n_real", 0) if n_features is None else n_features,
                     "output": "logits" if n_features is None else "features"}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelFileError(f"{source}: bad metadata ({exc})") from None


def check_version(version: Any, source: str) -> int:
    """``version`` as an int if this fakegradient reads it; else a one-line :class:`ModelFileError`."""
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{source}: unknown bundle format version {str(version)[:40]!r}")
    if version > BUNDLE_VERSION:
        raise ModelFileError(f"{source} was made by a newer fakegradient (bundle format {version}, this one reads "
                             f"up to {BUNDLE_VERSION}): upgrade fakegradient")
    return version


def to_props(info: ModelInfo, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``fakegradient.*`` metadata of model.onnx for ``info`` (``extra``: public fields such as
    ``preprocess`` and ``categories``, JSON-encoded). The digest is added last, by the exporter."""
    props = {"format_version": str(BUNDLE_VERSION), "fingerprint": info.fingerprint, "arch": info.arch,
             "n_outputs": str(info.n_outputs), "method": info.method, "output": info.output}
    props |= {name: json.dumps(value) for name, value in (extra or {}).items()}
    return {PREFIX + name: value for name, value in props.items()}


def read_props(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """The public fields of model.onnx's metadata, decoded (``preprocess``/``categories`` from JSON,
    as they are otherwise); refuses a newer format and undecodable fields in one line."""
    check_version(props.get(VERSION_KEY, "1"), source)
    out: dict[str, Any] = {}
    for key, value in props.items():
        name = key.removeprefix(PREFIX)
        if not key.startswith(PREFIX) or key == VERSION_KEY:
            continue
        if name in JSON_FIELDS:
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ModelFileError(f"{source}: its {name} metadata is not JSON") from None
        out[name] = value
    return out
