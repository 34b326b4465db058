"""Exceptions raised by fakegradient. Every user-facing failure is a ``FakeGradientError``."""


class FakeGradientError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""


class KeyMismatch(FakeGradientError):
    """A key does not belong to the model (or outputs) it is used with."""


class KeyFileError(FakeGradientError):
    """A key file is missing, truncated, edited or not a fakegradient key."""


class HeadNotFound(FakeGradientError):
    """No classification layer could be found; pass ``head=`` explicitly."""


class WeightsUnavailable(FakeGradientError):
    """Pretrained weights are not in the local cache and cannot be downloaded."""


class ModelFileError(FakeGradientError):
    """A protected-model file is missing, corrupted or of an unknown format."""


class InvalidArgument(FakeGradientError, ValueError):
    """A bad option or hyper-parameter (the CLI exits 2, as for a usage error)."""


class MissingExtra(FakeGradientError, ModuleNotFoundError):
    """An optional dependency is not installed: the message names the extra that installs it
    (``pip install '.[EXTRA]'`` in a clone), never a module deep in a dependency. Also a
    ``ModuleNotFoundError``, for ``except ImportError``."""


class ConfigError(InvalidArgument):
    """A bad setting of a library configuration (e.g. ``EvaluationConfig``): ``field`` names it, the message
    speaks of it by its field name (``batch_size``); the CLI names the flag instead (:meth:`as_flag`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def as_flag(self) -> str:
        """The message with the field's name replaced by its command-line flag (``--batch-size``)."""
        return str(self).replace(self.field, "--" + self.field.replace("_", "-"))
