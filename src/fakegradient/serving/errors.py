"""Errors the inference server answers with: each class carries its HTTP ``status``.

The server's exception handlers turn them into ``{"error": "<message>"}`` JSON, the body that
KServe and Triton send and that ``tritonclient`` decodes.
"""

from __future__ import annotations

from typing import ClassVar


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status it answers with, plus ``headers``."""

    status: int = 400
    headers: ClassVar[dict[str, str]] = {}


class InvalidInput(ProtocolError):
    """The request is malformed or does not match the model's input."""

    status = 400


class ModelNotFound(ProtocolError):
    """No model of that name is served."""

    status = 404


class PayloadTooLarge(ProtocolError):
    """The body or the batch is over the server's limit."""

    status = 413


class RequestTimeout(ProtocolError):
    """The client took longer than the server allows to send its request body; the connection is closed."""

    status = 408
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


class ServerBusy(ProtocolError):
    """Too many requests are being processed; the client should retry after ``Retry-After`` seconds."""

    status = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class UploadsBusy(ServerBusy):
    """The bodies being received from all clients together hold the server's limit: this one was dropped as
    it arrived; the connection is closed after the answer, to shed load."""

    headers: ClassVar[dict[str, str]] = {"Retry-After": "1", "Connection": "close"}


class Unauthorized(ProtocolError):
    """No bearer token, or not the server's."""

    status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="fakegradient"'}
