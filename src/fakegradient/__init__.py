"""fakegradient: the Fake Gradient defence (Feng et al., ACM MM 2021) for PyTorch classifiers."""

from .errors import (
    FakeGradientError,
    HeadNotFound,
    KeyFileError,
    KeyMismatch,
    ModelFileError,
    WeightsUnavailable,
)
from .key import Key
from .protect import METHODS, protect

__all__ = [
    "METHODS",
    "FakeGradientError",
    "HeadNotFound",
    "Key",
    "KeyFileError",
    "KeyMismatch",
    "ModelFileError",
    "WeightsUnavailable",
    "protect",
]
__version__ = "0.1.0"
