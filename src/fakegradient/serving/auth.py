"""Bearer tokens shared by the server (``serve --token-file``) and the device client (``classify
--token-file``): read from a file, never from the command line (where ``ps`` would show them)."""

from __future__ import annotations

import hmac
import logging
import os
import re

from ..errors import FakeGradientError
from ..secret_files import read_private_file, warn_if_shared

_log = logging.getLogger(__name__)

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token: safe in an HTTP header
MIN_TOKEN_CHARS = 16  # e.g. `openssl rand -hex 32` gives 64
MAX_TOKEN_FILE_BYTES = 4096


def read_token(path: str | os.PathLike) -> str:
    """The token in ``path`` (surrounding whitespace ignored); a one-line error unless it is one. Only a regular
    file is read (a FIFO never blocks); on POSIX, a warning is logged when group or others may read it."""
    data, mode = read_private_file(path, MAX_TOKEN_FILE_BYTES, "token file")
    token = data.decode("ascii", errors="replace").strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise FakeGradientError(f"token file {path} must hold one token of letters, digits and -._~+/ "
                                "(e.g. made by `openssl rand -hex 32`)")
    if len(token) < MIN_TOKEN_CHARS:
        raise FakeGradientError(f"the token in {path} is too short ({len(token)} characters; at least "
                                f"{MIN_TOKEN_CHARS}): make one with `openssl rand -hex 32`")
    warn_if_shared(_log, path, mode, "token file", "can call the server as the device")
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, value = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
