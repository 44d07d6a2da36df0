"""The pgmq calls that create, drop and measure intake's queues.

The drain's reads, leases and archives go through DB1's own functions
(intake.read_intents, intake.hand_back, intake.finish_committed, ...: see
engine/drain/store.py), which call pgmq inside DB1.

Only functions that pgmq 1.4.4 and 1.5.1 (hosted Supabase) both have are
called, never the `headers` overloads, and returned rows are read by column
name: newer pgmq inserted `last_read_at` before `vt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from intake_cli.platform.sqlfiles import queries

# The subset of SPEC §2: present in both pgmq 1.4.4 and 1.5.1.
PORTABLE_FUNCTIONS = frozenset(
    {
        "create",
        "create_unlogged",
        "send",
        "send_batch",
        "read",
        "set_vt",
        "delete",
        "archive",
        "metrics",
        "purge_queue",
        "drop_queue",
        "list_queues",
    }
)


@dataclass(frozen=True)
class QueueMetrics:
    queue_length: int
    oldest_msg_age_sec: int | None
    total_messages: int


def _query(name: str) -> str:
    return queries("pgmq")[name]


def queue_names(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute(_query("list_queues"))}


def ensure_queue(conn: psycopg.Connection, queue: str) -> bool:
    """Create the queue unless it exists; True when it was created."""
    if queue in queue_names(conn):
        return False
    conn.execute(_query("create_queue"), {"queue": queue})
    return True


def drop_queue(conn: psycopg.Connection, queue: str) -> None:
    if queue in queue_names(conn):
        conn.execute(_query("drop_queue"), {"queue": queue})


def metrics(conn: psycopg.Connection, queue: str) -> QueueMetrics:
    with conn.cursor(row_factory=dict_row) as cur:
        row: dict[str, Any] | None = cur.execute(
            _query("queue_metrics"), {"queue": queue}
        ).fetchone()
    assert row is not None
    return QueueMetrics(
        queue_length=int(row["queue_length"]),
        oldest_msg_age_sec=row["oldest_msg_age_sec"],
        total_messages=int(row["total_messages"]),
    )
