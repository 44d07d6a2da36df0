"""intake.read_intents finds the messages it leases by key, whatever the queue's size.

Its statement lives in a SQL function, planned without the arguments'
values: a plan resting on `qty`'s estimate hashed the whole queue table,
read by a full scan at every read. PostgreSQL's own auto_explain shows the
plan the function's statement ran with.
"""

from __future__ import annotations

import psycopg

from intake_cli.engine import claims
from tests.conftest import pool_spec
from tests.integration.test_claims import provision

QUEUED = 4000


def _plans(conn: psycopg.Connection, statement: str) -> list[str]:
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for setting in (
        "load 'auto_explain'",
        "set auto_explain.log_min_duration = 0",
        "set auto_explain.log_nested_statements = on",
        "set auto_explain.log_level = notice",
        "set client_min_messages = notice",
    ):
        conn.execute(setting)
    with conn.transaction(force_rollback=True):
        conn.execute(statement).fetchall()
    return [n for n in notices if "plan:" in n]


def test_a_read_looks_each_leased_message_up_by_its_key(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", QUEUED))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        users = [f"user-{n}" for n in range(QUEUED)]
        for first in range(0, QUEUED, claims.MAX_BATCH):
            claims.claim_batch(conn, "drop", users[first : first + claims.MAX_BATCH])
        conn.execute("analyze pgmq.q_intents")
        plans = _plans(conn, "select msg_id from intake.read_intents(30, 100)")

    [update] = [p for p in plans if "update" in p.lower() and "q_intents m" in p]
    assert "Index Scan using q_intents_pkey on q_intents m" in update, update
    assert "Seq Scan" not in update, update
