"""Class-name files, read the same way by ``protect --labels`` and the device's ``classify --labels``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import FakeGradientError

MAX_LABELS_BYTES = 16 * 2**20


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (UTF-8; surrounding blank lines ignored), or a JSON list."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise FakeGradientError(f"labels file {path} is larger than {MAX_LABELS_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8-sig")
        names = json.loads(text) if text.lstrip()[:1] in ("[", "{") else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FakeGradientError(f"cannot read labels from {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if names is None:
        names = [line.strip() for line in text.strip("\r\n").splitlines()]
        if names and not all(names):
            raise FakeGradientError(f"{path} must hold one non-empty class name per line")
    return checked_names(names, path)


def checked_names(names: Any, source: object) -> list[str]:
    """``names`` if it is a non-empty list of strings, else a clear error naming ``source``."""
    if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
        raise FakeGradientError(f"{source} holds no list of class names")
    return names
