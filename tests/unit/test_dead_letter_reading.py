"""Reading a dead letter or a queued message field by field, without a database.

Whatever the JSON text holds, reading it never raises: a letter is readable
with its fields, or marked with every problem and its fields as far as they
go (tests/acceptance/test_dlq_malformed.py runs the same against DB1).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from intake_cli.engine.dlq import read_letter
from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.intents import RawJson, parse_message
from intake_cli.engine.drain.store import as_jsonb
from intake_cli.platform.jsontext import read_json

INTENT = {
    "idempotency_key": "00000000-0000-4000-8000-0000000000aa",
    "pool_id": "drop",
    "user_id": "buyer",
    "resource_id": "00000000-0000-4000-8000-0000000000bb",
    "unit_no": 3,
    "claimed_at": "2026-01-01T00:00:00+00:00",
}
LETTER = {
    "intent": INTENT,
    "state": "validated",
    "attempts": 2,
    "last_error": "DB2 unavailable",
    "dead_at": "2026-01-01T00:00:01+00:00",
}


def text(**changes: Any) -> str:
    return json.dumps({**LETTER, **changes})


def test_a_letter_as_intake_writes_it_is_readable():
    letter = read_letter(7, text())
    assert letter.readable and letter.problems == ()
    data = letter.as_json()
    assert (data["state"], data["attempts"], data["pool_id"]) == ("validated", 2, "drop")
    assert "message_text" not in data


def test_an_old_letter_without_state_or_attempts_is_queued_with_none():
    letter = read_letter(7, json.dumps({"intent": INTENT}))
    assert letter.readable and (letter.state, letter.attempts) == ("queued", 0)


@pytest.mark.parametrize(
    ("message", "problem", "field", "shown"),
    [
        (text(attempts="many"), 'attempts: "many" is not a count of attempts', "attempts", None),
        (text(attempts=-3), "attempts: -3 is not", "attempts", None),
        (text(attempts=2**31), "attempts: 2147483648 is not", "attempts", None),
        (text(attempts=None), "attempts: null is not", "attempts", None),
        (text(attempts=[1]), "attempts: [1] is not", "attempts", None),
        (text(state={"s": 1}), "state: an object, not one of", "state", None),
        (text(state="dead"), 'state: "dead" is not one of', "state", "dead"),
        (text(last_error=["x"]), "last_error: an array, not a string", "last_error", None),
        (text(dead_at="soon"), 'dead_at: "soon" is not a timestamp', "dead_at", None),
        (text(dead_at=1.5), "dead_at: 1.5 is not a timestamp", "dead_at", None),
        (text(intent="x"), "intent: a string, not a JSON object", "intent", None),
        (text(intent={**INTENT, "pool_id": 5}), "intent.pool_id is not", "pool_id", None),
        (text(intent={**INTENT, "user_id": ""}), "intent.user_id is not", "user_id", ""),
        (
            text(intent={**INTENT, "idempotency_key": "K"}),
            "intent.idempotency_key is not a UUID",
            "idempotency_key",
            "K",
        ),
        ('"text"', "message: a string, not a JSON object", "pool_id", None),
        ("[]", "message: an array, not a JSON object", "pool_id", None),
        ("null", "message: null, not a JSON object", "pool_id", None),
        ("[" * 65 + "]" * 65, "message: nested deeper than 64 levels", "pool_id", None),
        ("[" * 5000 + "]" * 5000, "message: nested deeper than 64 levels", "pool_id", None),
        (text(attempts=1).replace("1,", "9" * 5000 + ",", 1), "4300 digits", "attempts", None),
        ("1" + "0" * 400 + ".5", "a number too large for a double", "pool_id", None),
    ],
)
def test_every_unreadable_field_is_marked_and_none_raises(message, problem, field, shown):
    letter = read_letter(7, message)
    assert not letter.readable
    assert any(problem in p for p in letter.problems), letter.problems
    data = letter.as_json()
    assert data[field] == shown
    assert data["message_text"] == message and data["readable"] is False
    # What a list or the API prints of it is plain JSON, whatever it held.
    json.loads(json.dumps(data))


def test_a_quoted_value_is_short_and_escaped():
    letter = read_letter(7, text(state="\x1b[2J" + "x" * 500))
    [problem] = letter.problems
    assert problem.startswith('state: "\\u001b[2Jxxx') and len(problem) < 150
    assert "\x1b" not in problem and problem.endswith(
        "… is not one of queued, validated, committed, refused"
    )


def test_strings_hide_no_brackets_from_the_depth_check():
    value, problem = read_json(json.dumps({"a": "[" * 500, "b": '\\"[[['}))
    assert problem is None and value["a"] == "[" * 500


def test_a_queue_message_intake_cannot_read_is_refused_with_the_reason():
    assert parse_message({"msg_id": 1, "message": "[" * 3000 + "]" * 3000}) == (
        "malformed intent message: nested deeper than 64 levels"
    )
    assert parse_message({"msg_id": 1, "message": '"intent"'}) == (
        "malformed intent message: not a JSON object"
    )
    intent = parse_message({"msg_id": 1, "message": json.dumps(INTENT)})
    assert not isinstance(intent, str) and intent.unit_no == 3
    # Refused, it goes back to DB1 as the text it came as.
    assert as_jsonb(RawJson("[[1]]")).dumps is str


def _payloads(keys: list[Any]) -> list[dict[str, Any]]:
    return [{"idempotency_key": key} for key in keys]


def test_the_culprit_is_the_first_payload_in_call_order_without_an_answer():
    payloads = _payloads(["c", "a", None, "b"])
    # DB2 calls them by key, NULLs last: a (2), b (4), c (1), then the null (3).
    assert ledger._call_order(payloads) == [2, 4, 1, 3]
    assert ledger._culprit(payloads, {}) == 2
    assert ledger._culprit(payloads, {2: {}, 4: {}}) == 1
    assert ledger._culprit(payloads, {2: {}, 4: {}, 1: {}}) == 3
    # Answers that are not a prefix of that order: DB2 ordered otherwise.
    assert ledger._culprit(payloads, {1: {}}) is None
