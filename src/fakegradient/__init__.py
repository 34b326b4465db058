"""fakegradient: the Fake Gradient defence (Feng et al., ACM MM 2021) for PyTorch classifiers.

Importing the package needs numpy only (device clients): the secrets (:class:`Key`, :class:`DeviceHead`, any
scheme's through :func:`load_secret`). ``protect`` and the sub-packages ``models``, ``core``, ``attacks``,
``evaluation`` and ``serving`` are loaded on first use, as ``torchvision.models`` is after ``import torchvision``.
``METHODS`` is the registry of what an evaluation compares (the baseline and every scheme).
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
from .device_head import DeviceHead
from .key import Key
from .schemes import Scheme, Secret, load_secret

__version__ = "0.1.0"
_EXPORTS = {"protect": ".protection", "METHODS": ".methods",
            **dict.fromkeys(("models", "core", "attacks", "evaluation", "serving", "methods", "defaults", "schemes"),
                            "")}
__all__ = ["DeviceHead", "FakeGradientError", "HeadNotFound", "InvalidArgument", "Key", "KeyFileError",
           "KeyMismatch", "ModelFileError", "Scheme", "Secret", "WeightsUnavailable", "load_secret", *_EXPORTS]
__getattr__, __dir__ = lazy(__name__, _EXPORTS, [*__all__, "__version__"])
