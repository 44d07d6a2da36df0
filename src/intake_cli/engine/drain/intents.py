"""What the drain reads: a queue message as the intent DB1's claim path wrote,
or the reason it cannot be one.

`dlq` reads dead letters with the same rules, so that a replayed intent is
judged as the drain would judge it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from intake_cli.platform.jsontext import read_json

# How the claim path writes an idempotency key or resource id (uuid → jsonb).
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BIGINT_MAX = 2**63 - 1

# The refusal of an intent whose pool lost its inventory in a DB1 crash: not
# a refusal at all, but "ask again after the rebuild".
LOST = "inventory lost"


@dataclass
class Intent:
    msg_id: int
    message: dict[str, Any]
    key: str
    pool_id: str
    unit_no: int
    user_id: str
    resource_id: str
    state: str = "queued"
    attempts: int = 0
    webhook_calls: int = 0
    error: str | None = None
    # How long this batch's webhook call for the intent took.
    webhook_ms: float | None = None
    # Checked against DB1 when read: None when the claim path issued this
    # intent and its unit is still its own; LOST while the pool's inventory
    # awaits its rebuild; otherwise why the message is refused.
    refusal: str | None = None


class Refusal(NamedTuple):
    """A message that is not a live intent of DB1's claim path: dead-lettered as it came.

    Neither the webhook nor DB2 ever sees it, and no intent state or unit
    changes for it.
    """

    msg_id: int
    # The parsed JSON, or a RawJson when intake cannot read it as a value.
    message: Any
    reason: str
    # None when the message is too malformed to name its pool.
    pool_id: str | None


@dataclass(frozen=True)
class RawJson:
    """A message kept as the JSON text DB1 holds, because intake cannot read it as a value."""

    text: str


def is_uuid(value: Any) -> bool:
    """Whether `value` is a UUID as the claim path writes one (text, lower case)."""
    return isinstance(value, str) and _UUID.match(value) is not None


def intent_problems(message: dict[str, Any]) -> list[str]:
    """What keeps a JSON object from being an intent as the claim path writes it."""
    problems = []
    for name in ("idempotency_key", "resource_id"):
        if not is_uuid(message.get(name)):
            problems.append(f"{name} is not a UUID")
    for name in ("pool_id", "user_id", "claimed_at"):
        value = message.get(name)
        if not (isinstance(value, str) and value):
            problems.append(f"{name} is not a non-empty string")
    unit_no = message.get("unit_no")
    if isinstance(unit_no, bool) or not isinstance(unit_no, int) or not 0 < unit_no <= _BIGINT_MAX:
        problems.append("unit_no is not a unit number")
    return problems


def parse_message(row: Mapping[str, Any]) -> Intent | str:
    """An Intent, or the reason the message cannot be one.

    Every field the unit check and DB2 rely on, in the form the claim path
    writes it: nothing that could make the batch's DB1 query fail reaches it.
    The message may come as DB1's JSON text (the store reads it so, so that
    one unreadable message cannot fail the read of its whole batch).
    """
    message = row["message"]
    if isinstance(message, str):
        message, unreadable = read_json(message)
        if unreadable:
            return f"malformed intent message: {unreadable}"
    if not isinstance(message, dict):
        return "malformed intent message: not a JSON object"
    if problems := intent_problems(message):
        return f"malformed intent message: {'; '.join(problems)}"
    return Intent(
        msg_id=int(row["msg_id"]),
        message=message,
        key=message["idempotency_key"],
        pool_id=message["pool_id"],
        unit_no=message["unit_no"],
        user_id=message["user_id"],
        resource_id=message["resource_id"],
    )
