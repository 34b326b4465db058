"""fakegradient: the Fake Gradient defence (Feng et al., ACM MM 2021) for PyTorch classifiers.

Importing the package needs numpy only (device clients); ``protect`` loads torch on first use.
"""

import importlib
from typing import Any

from .errors import (
    FakeGradientError,
    HeadNotFound,
    KeyFileError,
    KeyMismatch,
    ModelFileError,
    WeightsUnavailable,
)
from .key import Key

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


def __getattr__(name: str) -> Any:
    if name in ("protect", "METHODS"):
        return getattr(importlib.import_module(".protection", __name__), name)
    raise AttributeError(f"module 'fakegradient' has no attribute {name!r}")
