"""fakegradient: the Fake Gradient defence (Feng et al., ACM MM 2021) for PyTorch classifiers.

Importing the package needs numpy only (device clients). ``protect`` and the sub-packages
``models``, ``core``, ``attacks``, ``evaluation`` and ``serving`` are loaded on first use, as
``torchvision.models`` is after ``import torchvision``.
"""

from ._lazy import lazy
from .errors import (
    FakeGradientError,
    HeadNotFound,
    InvalidArgument,
    KeyFileError,
    KeyMismatch,
    ModelFileError,
    WeightsUnavailable,
)
from .key import Key

__version__ = "0.1.0"
_EXPORTS = {"protect": ".protection", "METHODS": ".protection",
            **dict.fromkeys(("models", "core", "attacks", "evaluation", "serving", "methods", "defaults"), "")}
__all__ = ["FakeGradientError", "HeadNotFound", "InvalidArgument", "Key", "KeyFileError", "KeyMismatch",
           "ModelFileError", "WeightsUnavailable", *_EXPORTS]
__getattr__, __dir__ = lazy(__name__, _EXPORTS, [*__all__, "__version__"])
