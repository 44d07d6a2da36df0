"""The dead-letter queue: list, show, replay, purge.

pgmq has no dead-letter queue of its own; ours is a second pgmq queue
(`<queue>_dlq`) whose messages wrap the intent with the state it had
reached, its attempts and its last error. Listing reads the DLQ table
directly, so looking does not count as a delivery.

Anything with access to DB1 can write into that queue, and an older intake
wrote other shapes: every message is read field by field, and one that is
not what intake writes is listed and shown marked unreadable (with what is
wrong and its text as DB1 holds it), never replayed, and never in the way
of the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from intake_cli.engine.drain.intents import intent_problems, is_uuid
from intake_cli.platform.errors import UnknownDeadLetter, UsageError
from intake_cli.platform.jsontext import read_json
from intake_cli.platform.sqlfiles import queries

# The states a dead letter records: where its intent had got to (a replay
# resumes from there), or refused (the drain would not take the message).
STATES = ("queued", "validated", "committed", "refused")
_INT4_MAX = 2**31 - 1
# How much of a value that is not what intake writes a problem quotes.
QUOTED_CHARS = 60


@dataclass(frozen=True)
class DeadLetter:
    """A DLQ message as far as intake can read it.

    `problems` says what it cannot read; each such field is None (a string
    of the right type but the wrong form is kept, for the operator to see).
    A letter with problems is listed and shown, never replayed, and its
    JSON carries the message exactly as DB1 holds it.
    """

    msg_id: int
    text: str
    intent: dict[str, Any] | None
    state: str | None
    attempts: int | None
    last_error: str | None
    dead_at: str | None
    problems: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        return not self.problems

    def field(self, name: str) -> str | None:
        """One of the intent's text fields, None unless it is text."""
        value = (self.intent or {}).get(name)
        return value if isinstance(value, str) else None

    def as_json(self) -> dict[str, Any]:
        data = {
            "msg_id": self.msg_id,
            "dead_at": self.dead_at,
            "idempotency_key": self.field("idempotency_key"),
            "pool_id": self.field("pool_id"),
            "user_id": self.field("user_id"),
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "intent": self.intent,
            "readable": self.readable,
            "problems": list(self.problems),
        }
        if not self.readable:
            # The export before a purge loses nothing intake could not read.
            data["message_text"] = self.text
        return data


def _select(dlq: str, where: sql.Composable, lock: bool = False) -> sql.Composed:
    # The message as text, read by read_letter: psycopg's own JSON reader
    # would raise on one deep or long-numbered message and lose the page.
    return sql.SQL("select msg_id, message::text as text from {} {} order by msg_id{}").format(
        sql.Identifier("pgmq", f"q_{dlq}"),
        where,
        sql.SQL(" for update" if lock else ""),
    )


def _quoted(value: Any) -> str:
    """A value as a problem quotes it: JSON with every control character escaped, cut short."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "…"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _timestamp(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def read_letter(msg_id: int, text: str) -> DeadLetter:
    """A dead letter from the message's JSON text; whatever it holds, never an exception."""
    body, unreadable = read_json(text)
    if unreadable:
        return DeadLetter(msg_id, text, None, None, None, None, None, (f"message: {unreadable}",))
    if not isinstance(body, dict):
        problem = f"message: {_kind(body)}, not a JSON object"
        return DeadLetter(msg_id, text, None, None, None, None, None, (problem,))
    problems: list[str] = []

    intent = body.get("intent")
    if not isinstance(intent, dict):
        problems.append(f"intent: {_kind(intent)}, not a JSON object")
        intent = None
    else:
        problems += [f"intent.{problem}" for problem in intent_problems(intent)]

    # A dead letter from before the state and attempts were recorded: queued, none.
    state = body.get("state", "queued")
    if not isinstance(state, str):
        problems.append(f"state: {_kind(state)}, not one of {', '.join(STATES)}")
        state = None
    elif state not in STATES:
        problems.append(f"state: {_quoted(state)} is not one of {', '.join(STATES)}")

    attempts = body.get("attempts", 0)
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 0 <= attempts <= _INT4_MAX
    ):
        problems.append(f"attempts: {_quoted(attempts)} is not a count of attempts")
        attempts = None

    last_error = body.get("last_error")
    if last_error is not None and not isinstance(last_error, str):
        problems.append(f"last_error: {_kind(last_error)}, not a string")
        last_error = None

    dead_at = body.get("dead_at")
    if dead_at is not None and not (isinstance(dead_at, str) and _timestamp(dead_at)):
        problems.append(f"dead_at: {_quoted(dead_at)} is not a timestamp")
        dead_at = None

    return DeadLetter(msg_id, text, intent, state, attempts, last_error, dead_at, tuple(problems))


def list_letters(
    conn: psycopg.Connection, dlq: str, limit: int | None = None, after: int | None = None
) -> list[DeadLetter]:
    """Dead letters in id order; `after` pages on from the last id of the previous page."""
    where: sql.Composable = sql.SQL("")
    if after is not None:
        where = sql.SQL("where msg_id > {}").format(sql.Literal(after))
    query = _select(dlq, where)
    if limit:
        query = sql.SQL("{} limit {}").format(query, sql.Literal(limit))
    with conn.cursor(row_factory=dict_row) as cur:
        return [read_letter(row["msg_id"], row["text"]) for row in cur.execute(query)]


def _fetch(
    conn: psycopg.Connection, dlq: str, msg_ids: list[int], lock: bool = False
) -> list[DeadLetter]:
    query = _select(dlq, sql.SQL("where msg_id = any(%s)"), lock)
    with conn.cursor(row_factory=dict_row) as cur:
        letters = [
            read_letter(row["msg_id"], row["text"]) for row in cur.execute(query, (msg_ids,))
        ]
    missing = sorted(set(msg_ids) - {letter.msg_id for letter in letters})
    if missing:
        raise UnknownDeadLetter(f"no dead letter with id {', '.join(map(str, missing))} in {dlq}")
    return letters


def show(conn: psycopg.Connection, dlq: str, msg_id: int) -> dict[str, Any]:
    """One dead letter, with what DB1 knows of its intent when its key is one."""
    [letter] = _fetch(conn, dlq, [msg_id])
    data = letter.as_json()
    key = letter.field("idempotency_key")
    # The key as the claim path writes it, or no lookup: anything else
    # would fail the uuid cast of the query.
    if is_uuid(key):
        with conn.cursor(row_factory=dict_row) as cur:
            data["intent_state"] = cur.execute(
                queries("dlq")["intent_state"], {"key": key}
            ).fetchone()
    return data


SELECTION_RULE = "name dead letter ids to replay, or pass --all (not both)"


def check_selection(msg_ids: list[int] | None, replay_all: bool) -> list[int] | None:
    """The ids to replay, None meaning all of them; both or neither named is refused."""
    if replay_all == bool(msg_ids):
        raise UsageError(SELECTION_RULE)
    return None if replay_all else msg_ids


PURGE_RULE = "purge deletes every dead letter: export them first, then pass --yes"


@dataclass(frozen=True)
class ReplayReport:
    """What a replay put back on the queue, and the dead letters it would not."""

    dry_run: bool
    # as_json of each letter, with msg_id_after: its new message id (None in a dry run).
    replayed: list[dict[str, Any]]
    # as_json of each unreadable letter, with the reason it stays.
    refused: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "replayed": self.replayed, "refused": self.refused}


def _refusal(letter: DeadLetter) -> str:
    return (
        f"dead letter {letter.msg_id} cannot be read as an intent intake wrote "
        f"({'; '.join(letter.problems)}): inspect it with `intake dlq show {letter.msg_id}`"
    )


def replay(
    conn: psycopg.Connection,
    queue: str,
    dlq: str,
    msg_ids: list[int] | None,
    *,
    dry_run: bool = False,
) -> ReplayReport:
    """Put dead letters back on the queue (all of them when msg_ids is None), in one transaction.

    An unreadable letter is never replayed (its key or state would fail the
    replay of all the others in DB1, or put junk back on the queue): it stays,
    and the report says why. The others go on. Naming only unreadable ones
    is refused with a UsageError, as nothing would be done.
    """
    with conn.transaction():
        if msg_ids is None:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(_select(dlq, sql.SQL(""), lock=True)).fetchall()
            letters = [read_letter(row["msg_id"], row["text"]) for row in rows]
        else:
            letters = _fetch(conn, dlq, msg_ids, lock=True)
        readable = [letter for letter in letters if letter.readable]
        refused = [
            {**letter.as_json(), "reason": _refusal(letter)}
            for letter in letters
            if not letter.readable
        ]
        if msg_ids is not None and refused and not readable:
            raise UsageError("; ".join(item["reason"] for item in refused))
        moved: dict[int, int | None] = {letter.msg_id: None for letter in readable}
        if readable and not dry_run:
            with conn.cursor() as cur:
                moved.update(
                    cur.execute(
                        queries("dlq")["replay"],
                        {
                            "queue": queue,
                            "dlq": dlq,
                            "dlq_msg_ids": [letter.msg_id for letter in readable],
                            "intents": [Jsonb(letter.intent) for letter in readable],
                            "states": [letter.state for letter in readable],
                        },
                    ).fetchall()
                )
    replayed = [{**letter.as_json(), "msg_id_after": moved[letter.msg_id]} for letter in readable]
    return ReplayReport(dry_run, replayed, refused)


def purge(conn: psycopg.Connection, dlq: str) -> int:
    row = conn.execute(queries("dlq")["purge"], {"dlq": dlq}).fetchone()
    return int(row[0]) if row else 0
