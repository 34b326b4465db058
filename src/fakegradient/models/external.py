"""Classifiers of other libraries, by prefixed name: ``timm:<name>`` (``timm.create_model``) and
``hf:<folder or id>`` (Hugging Face ``AutoModelForImageClassification``). Nothing is downloaded: weights
come from a file, a local folder or the Hugging Face cache, or the model is built with random weights.

Each loader returns the model and what a client needs to feed it: the preprocessing spec (the dict of
:func:`fakegradient.models.preprocessing.make_spec`) and the class names, when the source knows them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import FakeGradientError, WeightsUnavailable
from ..head import Logits
from .preprocessing import make_spec

PREFIXES = ("timm:", "hf:")
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # Hugging Face processors' ``resample``


@dataclass
class Loaded:
    """A model from another library: (B, 3, H, W) → (B, N) logits, with what its source says about it."""

    model: nn.Module
    preprocess: dict[str, Any] | None = None
    categories: list[str] | None = None
    weights: str | None = None  # where the weights came from (None: random init)


def is_external(name: str) -> bool:
    return name.startswith(PREFIXES)


PRETRAINED = ("DEFAULT", "pretrained")  # timm users say pretrained (``create_model(name, pretrained=True)``)


def load(name: str, weights: str | None = "DEFAULT", **kwargs: Any) -> Loaded:
    """``timm:<name>`` or ``hf:<folder or id>``; ``weights``: ``"DEFAULT"`` or ``"pretrained"`` (the pretrained
    weights, from the local cache), a checkpoint file (timm), or None (random init)."""
    if weights is not None and weights.lower() in {p.lower() for p in PRETRAINED}:
        weights = "DEFAULT"
    prefix, _, rest = name.partition(":")
    if not rest:
        raise FakeGradientError(f"model {name!r}: give a name after {prefix + ':'!r}")
    return _load_timm(rest, weights, **kwargs) if prefix == "timm" else _load_hf(rest, weights, **kwargs)


def _load_timm(name: str, weights: str | None, **kwargs: Any) -> Loaded:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name.split(".")[0]):
        raise FakeGradientError(f"unknown timm model {name!r} (see timm.list_models())")
    options: dict[str, Any] = {}
    source = None
    if weights == "DEFAULT":  # the hub's checkpoint, from the cache (timm adapts its head to num_classes)
        source = _timm_cached(name)
        options = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(source)}}
    elif weights is not None:  # the user's checkpoint: loaded as it is, strictly
        source = Path(weights)
        if not source.is_file():
            raise WeightsUnavailable(f"timm weights {source} do not exist (a checkpoint file; or --weights pretrained "
                                     "for timm's pretrained weights from the Hugging Face cache, or none)")
    try:
        model = timm.create_model(name, **options, **kwargs).eval()
        if weights not in (None, "DEFAULT"):
            timm.models.load_checkpoint(model, str(source), strict=True)
    except (RuntimeError, OSError, TypeError, ValueError, KeyError) as exc:
        raise FakeGradientError(f"timm cannot build {name!r}: {str(exc).strip().splitlines()[0][:300]}") from None
    config = resolve_data_config({}, model=model)
    crop = int(config["input_size"][-1])
    spec = make_spec(crop, config["mean"], config["std"], resize=int(crop / config.get("crop_pct", 1.0)),
                     interpolation=config.get("interpolation", "bilinear"))
    return Loaded(model, spec, None, None if source is None else str(source))


def _timm_cached(name: str) -> Path:
    """The pretrained checkpoint of timm model ``name`` in the Hugging Face cache, or WeightsUnavailable."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    except (AttributeError, RuntimeError, KeyError):
        repo = None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(path, str):
            return Path(path)
    raise WeightsUnavailable(f"the pretrained weights of timm model {name!r} are not in the Hugging Face cache "
                             f"({repo or 'no hub id'}); pass a checkpoint file (--weights FILE or --state-dict FILE), "
                             "or --weights none for random weights")


def _load_hf(where: str, weights: str | None, **kwargs: Any) -> Loaded:
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        if weights is None:  # the architecture only, from the folder's (or cache's) config.json
            config = AutoConfig.from_pretrained(where, local_files_only=True, **kwargs)
            model = AutoModelForImageClassification.from_config(config)
        else:
            model = AutoModelForImageClassification.from_pretrained(where, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsUnavailable(f"cannot load Hugging Face model {where!r} from a local folder or the cache "
                                 f"({str(exc).splitlines()[0][:200]})") from None
    model.eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if model.config.id2label else None
    if labels and all(label == f"LABEL_{i}" for i, label in enumerate(labels)):  # transformers' placeholders
        labels = None
    return Loaded(Logits(model), _hf_preprocess(where, model.config), labels, None if weights is None else where)


def _hf_preprocess(where: str, config: Any) -> dict[str, Any] | None:
    """The client spec from the model's ``preprocessor_config.json`` (folder or cache), or None."""
    path: Any = Path(where) / "preprocessor_config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            path = try_to_load_from_cache(where, "preprocessor_config.json")
        except ValueError:  # not a valid repo id
            path = None
        if not isinstance(path, str):
            return None
    try:
        processor = json.loads(Path(path).read_text())
        size, crop = processor.get("size") or {}, processor.get("crop_size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        edge = size.get("shortest_edge") or size.get("height") or config.image_size
        crop = (crop.get("height") if isinstance(crop, dict) else crop) or edge
        resize = int(crop / processor["crop_pct"]) if processor.get("crop_pct") and crop < 384 else edge
        mean = processor.get("image_mean", [0.5] * 3) if processor.get("do_normalize", True) else [0.0] * 3
        std = processor.get("image_std", [0.5] * 3) if processor.get("do_normalize", True) else [1.0] * 3
        return make_spec(int(crop), mean, std, resize=int(max(resize, crop)),
                         interpolation=_PIL_RESAMPLE.get(processor.get("resample", 2), "bilinear"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FakeGradientError(f"cannot read the preprocessing of {where!r} from {path}: {exc}") from None
