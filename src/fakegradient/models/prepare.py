"""Your own model, ready to protect: built by name (torchvision, EfficientNet-Lite, ``timm:``, ``hf:``) or by
a factory (``package.module:function``), with a fine-tuned state dict, its preprocessing and class names.

:func:`prepare` is what ``fakegradient protect`` runs; the Python API can call it too, or build a
module itself and pass :func:`fakegradient.models.preprocessing.make_spec` to ``write_bundle``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import FakeGradientError, InvalidArgument
from ..head import Logits, trace_head
from ..labels import read_labels
from . import external
from .preprocessing import make_spec

RANDOM_NOTE = "warning: random weights (--weights none): the predictions mean nothing (tests only)"


@dataclass
class Prepared:
    """A model to protect and what its cloud folder publishes for clients."""

    model: nn.Module  # (B, 3, crop, crop) → (B, N) logits
    preprocess: dict[str, Any]  # make_spec's dict
    categories: list[str] | None = None  # N class names
    arch: str | None = None  # a name that rebuilds the model (model.pt is written); None: model.onnx only
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # where the weights came from, for the file's metadata
    notes: list[str] = field(default_factory=list)  # choices made for the user (the CLI prints them)

    @property
    def input_size(self) -> list[int]:
        """(C, H, W) of one input."""
        return [3, self.preprocess["crop"], self.preprocess["crop"]]

    def extra(self) -> dict[str, Any]:
        """The public metadata of the cloud folder."""
        return {"preprocess": self.preprocess} | ({"categories": self.categories} if self.categories else {})


def prepare(name: str | None = None, *, factory: str | Callable[..., nn.Module] | None = None,
            weights: str | None = None, state_dict: str | os.PathLike | None = None, num_classes: int | None = None,
            input_size: int | None = None, mean: list[float] | None = None, std: list[float] | None = None,
            resize: int | None = None, interpolation: str | None = None,
            labels: str | os.PathLike | list[str] | None = None) -> Prepared:
    """Build the model ``name`` (or ``factory()``), load ``state_dict`` into it, and settle its preprocessing
    and class names. ``weights``: None picks the pretrained weights available offline, ``"none"`` is random
    init, else an entry (``IMAGENET1K_V1``) or, for ``timm:``, a file. With ``state_dict``, ``weights`` only
    names where the preprocessing (and the class names, when their number matches) come from.
    ``num_classes`` defaults to the checkpoint's. Explicit ``input_size``/``mean``/``std``/``resize``/
    ``interpolation`` override the source's preprocessing; a factory model needs them."""
    if (name is None) == (factory is None):
        raise InvalidArgument("give either a model name or a factory (--factory package.module:function)")
    if num_classes is not None and num_classes < 1:
        raise InvalidArgument(f"--num-classes must be >= 1, got {num_classes}")
    random_init = weights is not None and weights.lower() == "none"
    state = read_state_dict(state_dict) if state_dict is not None else None
    if factory is not None:
        if weights is not None and not random_init:
            raise InvalidArgument("--weights names pretrained weights of a named model; for a --factory model "
                                  "pass --state-dict")
        source = _Source(_factory_builder(factory))
    elif external.is_external(name):
        source = _external(name, None if (state is not None or random_init) else (weights or "DEFAULT"))
        if random_init:
            source.notes.append(RANDOM_NOTE)
    else:
        source = _registry(name, weights, random_init, state is not None)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = source.build(**kwargs)
    origin = source.weights
    if state is not None:
        model, kwargs = _fit(model, state, source.build, kwargs, input_size or source.crop, num_classes, state_dict)
        origin = str(state_dict)
    preprocess = _preprocess(source.preprocess, input_size, mean, std, resize, interpolation, factory is not None)
    categories = source.categories
    if labels is not None:
        categories = read_labels(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
        if len(categories) != (n := _n_outputs(model, preprocess["crop"])):
            raise InvalidArgument(f"{len(categories)} class names (--labels) for a model of {n} classes")
    elif categories is not None and (state is not None or random_init or num_classes is not None):  # if they fit
        categories = categories if len(categories) == _n_outputs(model, preprocess["crop"]) else None
    arch_kwargs = source.rebuild(kwargs) if source.arch else {}
    return Prepared(model.eval(), preprocess, categories, source.arch, arch_kwargs, origin, source.notes)


@dataclass
class _Source:
    """Where a model comes from: a builder taking ``num_classes=``, and what the source knows."""

    build: Callable[..., nn.Module]
    preprocess: dict[str, Any] | None = None
    categories: list[str] | None = None
    arch: str | None = None  # rebuilds the model for model.pt (None: model.onnx only)
    rebuild: Callable[[dict[str, Any]], dict[str, Any]] = dict
    weights: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def crop(self) -> int:
        return (self.preprocess or {}).get("crop", 224)


def _registry(name: str, weights: str | None, random_init: bool, fine_tuned: bool) -> _Source:
    """torchvision or EfficientNet-Lite: pretrained weights, or the architecture's preset for a checkpoint."""
    from . import get_weights, load, offline_weights, preprocess_spec, rebuild_kwargs

    notes: list[str] = []
    if fine_tuned or random_init:  # the architecture's preprocessing (and classes, if the number fits)
        named = get_weights(name, weights) if weights is not None and not random_init else None
        described = named or _default_entry(name)
        if named is None and described is not None:
            notes.append(f"preprocessing of {described} (the architecture's own; choose with --weights ENTRY, or "
                         "--input-size --mean --std --resize)")
        if random_init:
            notes.append(RANDOM_NOTE)
        return _Source(lambda **kw: load(name, weights=None, **kw),
                       preprocess_spec(described) if described is not None else None,
                       described.meta.get("categories") if described is not None else None, name,
                       lambda kw: rebuild_kwargs(name, None, **kw), None, notes)
    entry, note = offline_weights(name) if weights is None else (get_weights(name, weights), None)
    return _Source(lambda **kw: load(name, weights=entry, **kw), preprocess_spec(entry),
                   entry.meta.get("categories"), name, lambda kw: rebuild_kwargs(name, entry, **kw), str(entry),
                   [note] if note else [])


def _external(name: str, weights: str | None) -> _Source:
    """``timm:``/``hf:``: the first build is the one :func:`external.load` made to read the metadata."""
    hf = name.startswith("hf:")
    first = external.load(name, weights)
    kept = [first]

    def build(**kw: Any) -> nn.Module:
        if not kw and kept:
            return kept.pop().model
        if hf and "num_classes" in kw:
            kw = {"num_labels": kw.pop("num_classes")} | kw
        return external.load(name, weights, **kw).model

    return _Source(build, first.preprocess, first.categories, None if hf else name, dict, first.weights)


def _factory_builder(factory: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    function = resolve_factory(factory)
    label = factory if isinstance(factory, str) else getattr(factory, "__qualname__", "factory")
    return lambda **kw: _call(function, label, **kw)


def _default_entry(name: str) -> Any:
    from . import get_weights

    try:
        return get_weights(name, "DEFAULT")
    except FakeGradientError:
        return None


def _n_outputs(model: nn.Module, size: int) -> int:
    from ..head import model_output

    with torch.no_grad():
        return int(model_output(model, torch.zeros(1, 3, size, size)).reshape(1, -1).shape[1])


def _preprocess(base: dict[str, Any] | None, input_size: int | None, mean: list[float] | None,
                std: list[float] | None, resize: int | None, interpolation: str | None,
                factory: bool) -> dict[str, Any]:
    """``base`` with the explicit values put in; an error naming the flags when something is unknown."""
    base = base or {}
    crop = input_size or base.get("crop")
    mean, std = mean or base.get("mean"), std or base.get("std")
    missing = [flag for flag, value in (("--input-size", crop), ("--mean", mean), ("--std", std)) if value is None]
    if missing:
        what = "a --factory model" if factory else "this model"
        raise InvalidArgument(f"the preprocessing of {what} is unknown: pass {', '.join(missing)} (e.g. --input-size "
                              "224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225; --resize defaults to the input "
                              "size)")
    if resize is None:
        resize = base.get("resize") if input_size is None or input_size == base.get("crop") else input_size
    return make_spec(int(crop), mean, std, resize=resize,
                     interpolation=interpolation or base.get("interpolation", "bilinear"))


def resolve_factory(factory: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``"package.module:function"`` → the function (the current folder is importable, as for ``python -m``)."""
    if callable(factory):
        return factory
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise InvalidArgument(f"--factory must be package.module:function, got {factory!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FakeGradientError(f"--factory: cannot import {module_name!r} ({exc})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise FakeGradientError(f"--factory: {module_name!r} has no function {attr!r}")
    return function


def _call(build: Callable[..., nn.Module], label: str, **kwargs: Any) -> nn.Module:
    try:
        parameters = inspect.signature(build).parameters
        takes = "num_classes" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    except (TypeError, ValueError):
        takes = True
    if kwargs and not takes:
        raise InvalidArgument(f"--factory {label} takes no num_classes argument: drop --num-classes, or add it")
    try:
        model = build(**kwargs)
    except Exception as exc:  # the user's code
        raise FakeGradientError(f"--factory {label} failed: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise FakeGradientError(f"--factory {label} returned a {type(model).__name__}, not a torch nn.Module")
    return model.eval()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: a state dict, or one under ``state_dict``/``model``; DataParallel's ``module.``
    prefix is removed. Loaded with ``weights_only=True`` (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FakeGradientError(f"no such state dict: {path}") from None
    except Exception as exc:  # pickle errors, zip errors, a whole pickled model
        raise FakeGradientError(f"{path} is not a readable state dict ({exc.__class__.__name__}); save one with "
                                "torch.save(model.state_dict(), path)") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise FakeGradientError(f"{path} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _fit(model: nn.Module, state: dict[str, torch.Tensor], build: Callable[..., nn.Module],
         kwargs: dict[str, Any], size: int, num_classes: int | None,
         path: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``state`` into ``model``; without ``num_classes``, first rebuild the model with the checkpoint's
    number of classes (the rows of its head, found by tracing a (2, 3, size, size) probe) when it differs."""
    if num_classes is None:
        head = _head_name(model, size)
        want = state.get(f"{head}.weight") if head is not None else None
        have = _inner(model).state_dict().get(f"{head}.weight") if head is not None else None
        if want is not None and have is not None and want.shape[:1] != have.shape[:1]:
            kwargs = kwargs | {"num_classes": int(want.shape[0])}
            try:
                model = build(**kwargs)
            except InvalidArgument:  # a factory without num_classes
                raise FakeGradientError(f"{path} has {want.shape[0]} classes, the model {have.shape[0]}, and its "
                                        "factory takes no num_classes argument") from None
    load_into(_inner(model), state, path, hint_num_classes=num_classes is None)
    return model, kwargs


def _inner(model: nn.Module) -> nn.Module:
    """The model a checkpoint was saved from (a Hugging Face model, not our Logits wrapper)."""
    return model.model if isinstance(model, Logits) else model


def _head_name(model: nn.Module, size: int) -> str | None:
    probe = torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(0))
    try:
        return trace_head(_inner(model).eval(), probe).head
    except FakeGradientError:
        return None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Any, hint_num_classes: bool = True) -> None:
    """``model.load_state_dict(state)``, strictly; a mismatch is one line naming the first differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = ([f"shape of {shapes[0]}" + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else "")] if shapes
                else []) + [f"{len(keys)} {what} key(s), e.g. {keys[0]!r}"
                            for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        hint = " (pass --num-classes with the checkpoint's number of classes)" if shapes and hint_num_classes else ""
        raise FakeGradientError(f"cannot load {path} into the model: {'; '.join(problems)}{hint}")
    model.load_state_dict(state)
