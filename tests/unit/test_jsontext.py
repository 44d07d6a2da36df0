"""platform/jsontext: orjson where it reads and writes as json does, json everywhere else.

Every text here is read as json.loads (with a double's overflow refused)
reads it, and every value written as json.dumps writes it compactly, or
refused with json's own reason: the fast path changes the cost, never the
answer.
"""

from __future__ import annotations

import datetime
import json
import math
import random
from typing import Any

import pytest

from intake_cli.platform.jsontext import MAX_JSON_DEPTH, dump_ascii, read_json
from tests.unit.test_dead_letter_reading import INTENT

TEXTS = [
    json.dumps(INTENT),
    json.dumps({**INTENT, "state": "validated", "paid": True, "note": None}),
    '{"idempotency_key": "x", "status": "committed", "ticket": 9}',
    "{}",
    "[]",
    '"just text"',
    "17",
    "null",
    '{"a": 1, "a": 2, "b": 3}',  # the last of a repeated key, in its first place
    '{"a": 18446744073709551615}',  # the largest integer orjson reads as one
    '{"a": 18446744073709551616}',  # orjson: a float; json: the integer
    '{"a": -9223372036854775809}',
    '{"a": ' + "9" * 400 + "}",
    '{"a": ' + "9" * 5000 + "}",  # past Python's 4,300 digits
    '{"a": 1.5, "b": -0.0, "c": 1e308}',
    '{"a": 1e400}',  # beyond a double
    '{"a": -1e400}',
    '{"a": NaN}',
    '{"a": Infinity}',
    '{"a": "\\ud800"}',  # an unpaired surrogate escape
    '{"a": "\ud800"}',  # an unpaired surrogate itself
    '"\\udfff"',
    '{"a": "\\u0000\\n\\t\\"\\\\"}',
    '{"a": "caf\u00e9 \u2603 \U0001f600"}',
    '{"a": "\\u00e9"}',
    "\ufeff{}",  # a byte order mark
    '{"a": 1,}',
    '{"a": "\x01"}',  # a control character left raw
    '{"a": 01}',
    '{"a": .5}',
    '{"a": +1}',
    '{"a": "\\x41"}',
    '{"a": 1}\x00',
    '{"a"\x0b: 1}',
    '{"a": "\\ud83d\\ude00"}',  # a surrogate pair
    '{"a": 1} x',
    ' \n{"a": 1}\t ',
    "",
    "{",
    '{"a": {"b": [1, 2, {"c": null}]}}',
    json.dumps({"a": "[" * 500, "b": '\\"[[['}),
    "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
    "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    "[" * 3000 + "]" * 3000,
    '{"a": "' + "{" * 100 + '"}',
]


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"a number too large for a double ({len(text)} characters)")
    return value


def _json_reading(text: str) -> tuple[Any, str | None]:
    """What read_json answered before orjson: json alone, after the depth check."""
    depth = deepest = 0
    inside = escaped = False
    for char in text:
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == '"':
            inside = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        return json.loads(text, parse_float=_finite), None
    except ValueError as exc:
        return None, f"not readable as JSON here: {str(exc)[:200]}"


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@pytest.mark.parametrize("text", TEXTS)
def test_read_as_json_reads_it(text):
    value, problem = read_json(text)
    expected, expected_problem = _json_reading(text)
    assert problem == expected_problem
    assert _same(value, expected)


def _random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.randrange(-(2**70), 2**70)
    if kind == 2:
        return rng.choice([0.5, -1e16, 1e-7, 123.456, 2.0**70])
    alphabet = 'ab"\\/\n\t\x00\x1f\x7f[]{}é☃\U0001f600'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(4 if depth < 3 else 1)
    if kind == 1:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 2:
        return {str(_random_scalar(rng)): _random_value(rng, depth + 1) for _ in range(3)}
    if kind == 3 and depth == 0:
        return {f"k{i}": _random_scalar(rng) for i in range(rng.randrange(6))}
    return _random_scalar(rng)


def test_random_values_read_and_write_as_json_does():
    rng = random.Random(24)
    for _ in range(3000):
        value = _random_value(rng)
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
            read, problem = read_json(text)
            expected, expected_problem = _json_reading(text)
            assert problem == expected_problem and _same(read, expected), text
        written = dump_ascii(value)
        assert written.isascii()
        assert _same(json.loads(written), json.loads(json.dumps(value)))


def test_what_orjson_writes_in_ascii_is_byte_for_byte_json_compact():
    rng = random.Random(3)
    for _ in range(2000):
        value = {f"k{i}": _random_scalar(rng) for i in range(6)}
        if any(isinstance(v, float) for v in value.values()):
            continue  # the same number, written 1e16 by one and 1e+16 by the other
        assert dump_ascii(value) == json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "value",
    [
        {"user_id": "caf\u00e9"},  # orjson would send UTF-8: json's escapes instead
        {"n": 2**64},  # beyond orjson
        {1: "a key that is not text"},
        {"s": "\ud800"},
        {"nan": float("nan"), "inf": float("inf")},  # orjson: null
        {"none": None},
        {"when": datetime.datetime(2026, 1, 1)},  # json refuses it
    ],
)
def test_what_orjson_cannot_write_in_ascii_json_writes(value):
    try:
        expected = json.dumps(value, separators=(",", ":")).encode()
    except TypeError:
        with pytest.raises(TypeError):
            dump_ascii(value)
    else:
        assert dump_ascii(value) == expected
