"""The dead-letter queue: list, show, replay, purge.

pgmq has no dead-letter queue of its own; ours is a second pgmq queue
(`<queue>_dlq`) whose messages wrap the intent with the state it had
reached, its attempts and its last error. Listing reads the DLQ table
directly, so looking does not count as a delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from intake_cli.platform.errors import UnknownDeadLetter, UsageError
from intake_cli.platform.sqlfiles import queries


@dataclass(frozen=True)
class DeadLetter:
    msg_id: int
    dead_at: str | None
    intent: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "dead_at": self.dead_at,
            "idempotency_key": self.intent.get("idempotency_key"),
            "pool_id": self.intent.get("pool_id"),
            "user_id": self.intent.get("user_id"),
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "intent": self.intent,
        }


def _select(dlq: str, where: sql.Composable, lock: bool = False) -> sql.Composed:
    return sql.SQL("select msg_id, message from {} {} order by msg_id{}").format(
        sql.Identifier("pgmq", f"q_{dlq}"),
        where,
        sql.SQL(" for update" if lock else ""),
    )


def _letter(row: dict[str, Any]) -> DeadLetter:
    body = row["message"] if isinstance(row["message"], dict) else {}
    intent = body.get("intent")
    return DeadLetter(
        msg_id=row["msg_id"],
        dead_at=body.get("dead_at"),
        intent=intent if isinstance(intent, dict) else {"raw": intent},
        state=str(body.get("state", "queued")),
        attempts=int(body.get("attempts", 0)),
        last_error=body.get("last_error"),
    )


def list_letters(
    conn: psycopg.Connection, dlq: str, limit: int | None = None, after: int | None = None
) -> list[DeadLetter]:
    """Dead letters in id order; `after` pages on from the last id of the previous page."""
    where = sql.SQL("")
    if after is not None:
        where = sql.SQL("where msg_id > {}").format(sql.Literal(after))
    query = _select(dlq, where)
    if limit:
        query = sql.SQL("{} limit {}").format(query, sql.Literal(limit))
    with conn.cursor(row_factory=dict_row) as cur:
        return [_letter(row) for row in cur.execute(query)]


def _fetch(
    conn: psycopg.Connection, dlq: str, msg_ids: list[int], lock: bool = False
) -> list[DeadLetter]:
    query = _select(dlq, sql.SQL("where msg_id = any(%s)"), lock)
    with conn.cursor(row_factory=dict_row) as cur:
        letters = [_letter(row) for row in cur.execute(query, (msg_ids,))]
    missing = sorted(set(msg_ids) - {letter.msg_id for letter in letters})
    if missing:
        raise UnknownDeadLetter(f"no dead letter with id {', '.join(map(str, missing))} in {dlq}")
    return letters


def _key(value: Any) -> UUID | None:
    """The intent's idempotency key, if it is one: a forged dead letter may hold anything."""
    try:
        return UUID(str(value))
    except ValueError:
        return None


def show(conn: psycopg.Connection, dlq: str, msg_id: int) -> dict[str, Any]:
    [letter] = _fetch(conn, dlq, [msg_id])
    data = letter.as_json()
    key = _key(letter.intent.get("idempotency_key"))
    if key:
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


def replay(
    conn: psycopg.Connection,
    queue: str,
    dlq: str,
    msg_ids: list[int] | None,
    *,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Put dead letters back on the queue (all of them when msg_ids is None), in one transaction."""
    with conn.transaction():
        if msg_ids is None:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(_select(dlq, sql.SQL(""), lock=True)).fetchall()
            letters = [_letter(row) for row in rows]
        else:
            letters = _fetch(conn, dlq, msg_ids, lock=True)
        replayable = [letter for letter in letters if "idempotency_key" in letter.intent]
        if msg_ids is None:
            # --all replays every intent; malformed messages stay for inspection.
            letters = replayable
        elif len(replayable) < len(letters):
            broken = [str(letter.msg_id) for letter in letters if letter not in replayable]
            raise UsageError(
                f"dead letters {', '.join(broken)} carry no intent (malformed messages): "
                "inspect them with `intake dlq show`; they cannot be replayed"
            )
        if dry_run or not letters:
            return [{**letter.as_json(), "msg_id_after": None} for letter in letters]
        with conn.cursor() as cur:
            moved = dict(
                cur.execute(
                    queries("dlq")["replay"],
                    {
                        "queue": queue,
                        "dlq": dlq,
                        "dlq_msg_ids": [letter.msg_id for letter in letters],
                        "intents": [Jsonb(letter.intent) for letter in letters],
                        "states": [letter.state for letter in letters],
                    },
                ).fetchall()
            )
    return [{**letter.as_json(), "msg_id_after": moved[letter.msg_id]} for letter in letters]


def purge(conn: psycopg.Connection, dlq: str) -> int:
    row = conn.execute(queries("dlq")["purge"], {"dlq": dlq}).fetchone()
    return int(row[0]) if row else 0
