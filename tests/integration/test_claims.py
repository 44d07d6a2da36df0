"""The claim path against a real DB1: concurrency, limits, outcomes."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from intake_cli.engine import claims, lifecycle
from intake_cli.platform import config
from tests.conftest import pool_spec, write_config


def provision(tmp: Path, db1: str, db2: str, *pools: dict) -> config.Settings:
    settings = config.load(write_config(tmp, db1, db2, list(pools)))
    lifecycle.up(settings)
    return settings


@pytest.mark.slow
def test_herd_of_5000_on_1000_units_with_200_connections(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("herd", 1000))
    users = [f"user-{n}" for n in range(5000)]
    report = asyncio.run(claims.burst(db1_dsn, "herd", users, concurrency=200))

    assert report.outcomes == {"claimed": 1000, "sold_out": 4000}
    with psycopg.connect(db1_dsn) as conn:
        units = conn.execute(
            "select status::text, count(*), count(distinct locked_by), count(distinct resource_id)"
            " from intake.allocations where pool_id = 'herd' group by status"
        ).fetchall()
        assert units == [("locked", 1000, 1000, 1000)]
        queued = conn.execute(
            "select q.message, a.resource_id::text, a.locked_by, a.idempotency_key::text"
            " from pgmq.q_intents q join intake.allocations a"
            " on a.pool_id = q.message->>'pool_id'"
            " and a.unit_no = (q.message->>'unit_no')::bigint"
        ).fetchall()
    assert len(queued) == 1000
    for message, resource_id, holder, key in queued:
        assert message["resource_id"] == resource_id
        assert message["user_id"] == holder
        assert message["idempotency_key"] == key
        assert message["state"] == "queued"
    assert len({m["resource_id"] for m, *_ in queued}) == 1000
    assert len({m["user_id"] for m, *_ in queued}) == 1000


def test_outcomes_repeat_limit_unknown_and_paused(workdir, db1_dsn, db2_dsn):
    provision(
        workdir, db1_dsn, db2_dsn, pool_spec("solo", 3), pool_spec("multi", 10, per_user_limit=2)
    )
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        first = claims.claim(conn, "solo", "alice")
        again = claims.claim(conn, "solo", "alice")
        assert first.outcome == "claimed" and first.msg_id is not None
        assert again.outcome == "already_claimed"
        assert (again.resource_id, again.idempotency_key) == (
            first.resource_id,
            first.idempotency_key,
        )
        assert claims.claim(conn, "solo", "bob").outcome == "claimed"
        assert claims.claim(conn, "solo", "carol").outcome == "claimed"
        assert claims.claim(conn, "solo", "dave").outcome == "sold_out"

        assert [claims.claim(conn, "multi", "erin").outcome for _ in range(3)] == [
            "claimed",
            "claimed",
            "limit_reached",
        ]
        assert claims.claim(conn, "nope", "alice").outcome == "unknown_pool"
        assert claims.claim(conn, "solo", "").outcome == "invalid_user"

        conn.execute("update intake.engine_config set paused = true where pool_id = 'multi'")
        assert claims.claim(conn, "multi", "frank").outcome == "paused"
        depth = conn.execute("select count(*) from pgmq.q_intents").fetchone()[0]
    assert depth == 5  # three solo claims, two multi claims: repeats enqueue nothing


def test_released_unit_is_claimable_again_and_sold_out_after(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("tiny", 2))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        a = claims.claim(conn, "tiny", "a")
        claims.claim(conn, "tiny", "b")
        assert claims.claim(conn, "tiny", "c").outcome == "sold_out"
        released = conn.execute(
            "select intake.release_unit('tiny', %s, %s)", (a.unit_no, a.idempotency_key)
        ).fetchone()[0]
        assert released is True
        c = claims.claim(conn, "tiny", "c")
        assert c.outcome == "claimed" and c.unit_no == a.unit_no
        assert c.idempotency_key != a.idempotency_key
        assert claims.claim(conn, "tiny", "d").outcome == "sold_out"


def test_unit_skipped_by_an_aborted_claim_is_recovered_by_up(workdir, db1_dsn, db2_dsn):
    settings = provision(workdir, db1_dsn, db2_dsn, pool_spec("abort", 2))
    with psycopg.connect(db1_dsn) as conn:
        # The transaction dies after the claim took unit 1 from the sequence.
        claims.claim(conn, "abort", "ghost")
        conn.rollback()
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        assert claims.claim(conn, "abort", "x").unit_no == 2
        assert claims.claim(conn, "abort", "y").outcome == "sold_out"
    report = lifecycle.up(settings)
    assert report.recovered == {"abort": 1}
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        assert claims.claim(conn, "abort", "y").unit_no == 1
    assert Counter(p["pool_id"] for p in lifecycle.status(settings)["pools"]) == {"abort": 1}
