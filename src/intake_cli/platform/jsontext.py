"""JSON text from outside, read without ever raising: DB1's queue messages and
dead letters, the answers of DB2's commit RPC.

jsonb holds what Python's json module cannot: nesting a thousand levels deep,
integers of more than 4,300 digits, decimals beyond a double. Such text must
be refused or shown as unreadable where it is read, never raise where it
would stop a whole batch, a whole list or the drain.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Far deeper than anything intake writes (an intent is one level, a dead
# letter two), far shallower than where Python's JSON reader and writer run
# out of stack (about 1,000 levels).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


def _too_deep(text: str) -> bool:
    depth = 0
    # Brackets inside strings do not nest: strings go first.
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if char in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number too large for a double ({len(text)} characters)")
    return value


def read_json(text: str) -> tuple[Any, str | None]:
    """The value of JSON text, or (None, why it cannot be read)."""
    if _too_deep(text):
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        return json.loads(text, parse_float=_finite), None
    except ValueError as exc:
        return None, f"not readable as JSON here: {str(exc)[:200]}"
