"""Errors the inference server answers with: each class carries its HTTP ``status``.

The server's exception handlers turn them into ``{"error": "<message>"}`` JSON, the body that
KServe and Triton send and that ``tritonclient`` decodes.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    status: int = 400


class InvalidInput(ProtocolError):
    """The request is malformed or does not match the model's input."""

    status = 400


class ModelNotFound(ProtocolError):
    """No model of that name is served."""

    status = 404


class PayloadTooLarge(ProtocolError):
    """The body or the batch is over the server's limit."""

    status = 413
