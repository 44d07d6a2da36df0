"""Problems collected while a configuration is checked, and values quoted safely in them.

Every message may reach a terminal, a log line or an HTTP answer: a value is
quoted short, and never with a credential in it.
"""

from __future__ import annotations

import re
from typing import Any


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(f"{path}: {reason}")


# A password after `password=` / `sslpassword=` (libpq, or a URL's query),
# and a URL's user:password@ part.
_KEYWORD_SECRET = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
SHOWN_CHARS = 120


def redact(text: str) -> str:
    """`text` with anything that may be a credential replaced by ***, for messages."""
    return _URL_USERINFO.sub(r"\1***@", _KEYWORD_SECRET.sub(r"\1***", text))


def _show(value: Any) -> str:
    """A value as an error message quotes it: short, and never a credential."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        text = f'"{redact(value)}"'
    else:
        try:
            text = redact(repr(value))
        except ValueError:  # an int too long to write in decimal
            return f"an integer of {value.bit_length():,} bits"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
