"""Pools' unit sequences are logged, so a promoted standby can read them (migration 0007).

PostgreSQL 15 leaves a standby no initial state for an UNLOGGED sequence
created while it streamed: once promoted, reading it fails with "bad magic
number" and the pool could never be rebuilt. The promotion itself, with a
real standby: tests/acceptance/test_db1_failover.py.
"""

from __future__ import annotations

import asyncio

import psycopg

from intake_cli.engine import claims, lifecycle, recovery
from tests.conftest import pool_spec
from tests.integration.test_claims import provision
from tests.integration.test_inventory_rebuild import lose_volatile_state


def persistence(conn: psycopg.Connection) -> dict[str, str]:
    return dict(
        conn.execute(
            "select c.pool_id, s.relpersistence::text from intake.engine_config c"
            " join pg_class s on s.oid = c.unit_seq"
        ).fetchall()
    )


def test_a_new_pools_unit_sequence_is_logged(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 20), pool_spec("other", 5))
    with psycopg.connect(db1_dsn) as conn:
        assert persistence(conn) == {"drop": "p", "other": "p"}


def test_up_makes_older_unlogged_sequences_logged_and_keeps_their_position(
    workdir, db1_dsn, db2_dsn
):
    settings = provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 20))
    report = asyncio.run(claims.burst(db1_dsn, "drop", [f"u{n}" for n in range(7)], 7))
    assert report.outcomes == {"claimed": 7}
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # As a DB1 provisioned before 0007 has it.
        [seq] = conn.execute("select unit_seq::text from intake.engine_config").fetchone()
        conn.execute(f"alter sequence {seq} set unlogged")
        conn.execute("delete from intake.schema_version where version >= 7")
        assert persistence(conn) == {"drop": "u"}
    lifecycle.up(settings)
    with psycopg.connect(db1_dsn) as conn:
        assert persistence(conn) == {"drop": "p"}
        position = conn.execute(
            "select pg_sequence_last_value(unit_seq) from intake.engine_config"
        ).fetchone()[0]
        assert position == 7
        assert recovery.is_ready(conn, "drop")


def test_status_and_recover_report_a_pool_whose_sequence_cannot_be_read(workdir, db1_dsn, db2_dsn):
    """Status answers and recover reports the pool (exit 1), never a traceback or exit 3.

    "Cannot be read" is made here by pointing the pool at a relation that is
    not a sequence, which the rebuild refuses to replace. The real case, a
    sequence a promoted standby cannot read, is replaced by the rebuild:
    tests/acceptance/test_db1_failover.py.
    """
    settings = provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 20), pool_spec("other", 5))
    asyncio.run(claims.burst(db1_dsn, "drop", [f"u{n}" for n in range(5)], 5))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        lose_volatile_state(conn)
        conn.execute(
            "update intake.engine_config set unit_seq = 'intake.inventory_ready'::regclass"
            " where pool_id = 'drop'"
        )
        broken = conn.execute(
            "select intake.unit_seq_broken(unit_seq), intake.unit_seq_position(unit_seq)"
            " from intake.engine_config where pool_id = 'drop'"
        ).fetchone()
        assert broken == (True, None)
    status = lifecycle.status(settings)
    assert {p["pool_id"]: p["recovering"] for p in status["pools"]} == {
        "drop": True,
        "other": True,
    }
    reports = {r.pool_id: r for r in lifecycle.recover(settings)}
    assert "is not one of intake's sequences" in (reports["drop"].error or "")
    # The other pool is rebuilt all the same.
    assert reports["other"].error is None and reports["other"].rebuilt is not None
    with psycopg.connect(db1_dsn) as conn:
        assert not recovery.is_ready(conn, "drop") and recovery.is_ready(conn, "other")
