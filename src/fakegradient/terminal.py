"""Text from elsewhere (a server's answer, a published class name, a file name) made safe to print on a terminal."""

from __future__ import annotations

import unicodedata

_UNSAFE = {"Cc", "Cf", "Zl", "Zp"}  # controls, invisible format characters, line and paragraph separators


def escape_terminal(text: str) -> str:
    r"""``text`` with every control character escaped as Python's ``repr`` writes it (``\x1b``, ``\n``, ``\x9b``,
    ``\u202e``): C0, DEL, C1, the invisible format characters (bidirectional overrides, zero-width ones) and the
    Unicode line separators, so that printed text cannot move the cursor, recolour, clear the screen, reorder what
    is shown or start a forged line. Backslashes are kept as they are: escaping twice changes nothing."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _UNSAFE else c for c in text)
