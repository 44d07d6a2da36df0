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

import orjson

# Far deeper than anything intake writes (an intent is one level, a dead
# letter two), far shallower than where Python's JSON reader and writer run
# out of stack (about 1,000 levels).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
# What a value of a flat object may be for orjson's reading of it to be
# json's too (see `_flat_object`).
_SCALARS = frozenset({str, int, bool, type(None)})


def _too_deep(text: str) -> bool:
    # No deeper than its opening brackets, in strings or not: the common
    # case (an intent, an RPC's answer) is decided without a regex.
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
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


def _flat_object(text: str) -> dict[str, Any] | None:
    """The JSON object of strings, integers, booleans and nulls, read by orjson;
    None when the text is anything else.

    A tenth of json's cost, and what a queue message and an RPC's answer
    nearly always are. Where the two readers differ, the answer is not such
    an object: orjson refuses lone surrogates, NaN and a double's overflow,
    and reads an integer beyond 64 bits as a float. Nothing nested, so no
    depth to check.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        return None
    for item in value.values():
        if type(item) not in _SCALARS:
            return None
    return value


# Anything orjson would write its own way (a datetime, a dataclass, a str
# subclass) goes to json instead, which writes or refuses it as before.
_AS_JSON = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dump_ascii(value: Any) -> bytes:
    """A value read from JSON as compact JSON in ASCII: what
    json.dumps(value, separators=(",", ":")) writes, at a tenth of the cost
    where orjson writes it the same.

    The same bytes but for floats (the same number: 1e16 against 1e+16).
    orjson writes text beyond ASCII as UTF-8 and DEL as itself where json
    writes escapes, NaN as null where json writes NaN, and refuses an
    integer beyond 64 bits: such output (any with a null, to be sure) is
    json's, so a database whose encoding is not UTF-8 reads the same text
    as before.
    """
    try:
        data = orjson.dumps(value, option=_AS_JSON)
    except orjson.JSONEncodeError:
        data = None
    if data is not None and data.isascii() and b"\x7f" not in data and b"null" not in data:
        return data
    return json.dumps(value, separators=(",", ":")).encode()


def read_json(text: str) -> tuple[Any, str | None]:
    """The value of JSON text, or (None, why it cannot be read)."""
    flat = _flat_object(text)
    if flat is not None:
        return flat, None
    if _too_deep(text):
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        return json.loads(text, parse_float=_finite), None
    except ValueError as exc:
        return None, f"not readable as JSON here: {str(exc)[:200]}"
