"""claim_resources: a trusted backend's batch of claims against a real DB1."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest

from intake_cli.engine import claims
from intake_cli.platform.errors import UsageError
from tests.conftest import pool_spec
from tests.integration.test_claims import provision


def queue_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select q.msg_id, q.message, a.resource_id::text, a.locked_by, a.idempotency_key::text"
        " from pgmq.q_intents q join intake.allocations a"
        " on a.pool_id = q.message->>'pool_id' and a.unit_no = (q.message->>'unit_no')::bigint"
        " order by q.msg_id"
    ).fetchall()


def test_batch_of_100_on_60_units_straddles_the_sell_out(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 60))
    users = [f"user-{n:03d}" for n in range(100)]
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        answers = claims.claim_batch(conn, "drop", users)
        rows = queue_rows(conn)
        units = conn.execute(
            "select status::text, count(*), count(distinct resource_id) from intake.allocations"
            " group by 1"
        ).fetchall()

    assert [a.user_id for a in answers] == users
    assert Counter(a.outcome for a in answers) == {"claimed": 60, "sold_out": 40}
    # The earlier users get the last units.
    assert [a.outcome for a in answers] == ["claimed"] * 60 + ["sold_out"] * 40
    won = answers[:60]
    assert sorted(a.unit_no for a in won) == list(range(1, 61))
    assert len({a.resource_id for a in won}) == 60
    assert all(a.idempotency_key and a.msg_id for a in won)
    assert all(
        (a.resource_id, a.unit_no, a.idempotency_key, a.msg_id) == (None, None, None, None)
        for a in answers[60:]
    )
    assert units == [("locked", 60, 60)]

    assert len(rows) == 60
    by_msg = {a.msg_id: a for a in won}
    for msg_id, message, resource_id, holder, key in rows:
        answer = by_msg[msg_id]
        assert message["resource_id"] == resource_id == str(answer.resource_id)
        assert message["user_id"] == holder == answer.user_id
        assert message["idempotency_key"] == key == str(answer.idempotency_key)
        assert message["unit_no"] == answer.unit_no
        assert (message["v"], message["pool_id"], message["state"]) == (1, "drop", "queued")


def test_a_user_twice_in_a_batch_is_one_buyer_asking_twice(workdir, db1_dsn, db2_dsn):
    provision(
        workdir, db1_dsn, db2_dsn, pool_spec("solo", 10), pool_spec("duo", 10, per_user_limit=2)
    )
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        before = claims.claim(conn, "solo", "held")
        answers = claims.claim_batch(conn, "solo", ["ann", "bob", "ann", "held", "ann"])
        assert [a.outcome for a in answers] == [
            "claimed",
            "claimed",
            "already_claimed",
            "already_claimed",
            "already_claimed",
        ]
        first = answers[0]
        for again in (answers[2], answers[4]):
            assert (again.resource_id, again.unit_no, again.idempotency_key) == (
                first.resource_id,
                first.unit_no,
                first.idempotency_key,
            )
            assert again.msg_id is None
        assert (answers[3].resource_id, answers[3].idempotency_key) == (
            before.resource_id,
            before.idempotency_key,
        )

        duo = claims.claim_batch(conn, "duo", ["cat", "cat", "cat", "dan"])
        assert [a.outcome for a in duo] == ["claimed", "claimed", "limit_reached", "claimed"]
        # The limit answer carries the user's latest unit: the second claim.
        assert duo[2].unit_no == duo[1].unit_no and duo[2].resource_id == duo[1].resource_id
        assert [a.outcome for a in claims.claim_batch(conn, "duo", ["cat"])] == ["limit_reached"]

        holders = conn.execute(
            "select pool_id, locked_by, count(*) from intake.allocations"
            " where locked_by is not null group by 1, 2 order by 1, 2"
        ).fetchall()
        depth = conn.execute("select count(*) from pgmq.q_intents").fetchone()[0]
    assert holders == [
        ("duo", "cat", 2),
        ("duo", "dan", 1),
        ("solo", "ann", 1),
        ("solo", "bob", 1),
        ("solo", "held", 1),
    ]
    assert depth == 6  # held, ann, bob, cat twice, dan: repeats enqueue nothing


def test_paused_unknown_and_invalid(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("calm", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        mixed = claims.claim_batch(conn, "calm", ["ok", "", "x" * 201, "bad\x01id", "ok2"])
        assert [a.outcome for a in mixed] == [
            "claimed",
            "invalid_user",
            "invalid_user",
            "invalid_user",
            "claimed",
        ]
        conn.execute("update intake.engine_config set paused = true where pool_id = 'calm'")
        paused = claims.claim_batch(conn, "calm", ["p1", "", "ok"])
        assert [a.outcome for a in paused] == ["paused", "invalid_user", "paused"]
        unknown = claims.claim_batch(conn, "nope", ["u1", "u2"])
        assert [a.outcome for a in unknown] == ["unknown_pool", "unknown_pool"]
        assert claims.claim_batch(conn, "calm", []) == []
        depth = conn.execute("select count(*) from pgmq.q_intents").fetchone()[0]
        locked = conn.execute(
            "select count(*) from intake.allocations where locked_by is not null"
        ).fetchone()[0]
    assert (depth, locked) == (2, 2)


def test_released_units_then_sold_out_within_one_batch(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("tiny", 4))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        first = claims.claim_batch(conn, "tiny", ["a", "b", "c", "d"])
        for returned in (first[1], first[3]):
            released = conn.execute(
                "select intake.release_unit('tiny', %s, %s)",
                (returned.unit_no, returned.idempotency_key),
            ).fetchone()[0]
            assert released is True
        # A stale entry on the release list (unit 1 is held by a) is dropped as met.
        conn.execute("insert into intake.released_units (pool_id, unit_no) values ('tiny', 1)")
        again = claims.claim_batch(conn, "tiny", ["e", "f", "g"])
        assert [a.outcome for a in again] == ["claimed", "claimed", "sold_out"]
        assert sorted(a.unit_no for a in again[:2]) == [2, 4]
        assert conn.execute("select count(*) from intake.released_units").fetchone()[0] == 0
        assert conn.execute("select count(*) from pgmq.q_intents").fetchone()[0] == 6
        holders = conn.execute(
            "select unit_no, locked_by from intake.allocations order by unit_no"
        ).fetchall()
    assert holders == [(1, "a"), (2, "e"), (3, "c"), (4, "f")]


def test_concurrent_batches_and_single_claims_never_double_allocate(workdir, db1_dsn, db2_dsn):
    units, connections, rounds, size = 1000, 8, 10, 50
    provision(workdir, db1_dsn, db2_dsn, pool_spec("herd", units))
    # 3,000 distinct users asking 4,000 times: every connection's batches
    # overlap with others', in a different order, so the per-user locks are
    # contended, and two connections claim one at a time beside the batches.
    wave = [f"user-{n}" for n in range(3000)]
    asks = [*wave, *wave[:1000]]
    shares = [asks[i::connections] for i in range(connections)]
    for i, share in enumerate(shares):
        if i % 2:
            share.reverse()
    answers: list[claims.Claim] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(connections)

    def buyer(index: int, share: list[str]) -> None:
        try:
            with psycopg.connect(db1_dsn, autocommit=True) as conn:
                start.wait()
                got: list[claims.Claim] = []
                if index < 2:
                    got = [claims.claim(conn, "herd", user) for user in share]
                else:
                    for r in range(rounds):
                        got += claims.claim_batch(conn, "herd", share[r * size : (r + 1) * size])
            with lock:
                answers.extend(got)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=buyer, args=(i, s)) for i, s in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures

    assert len(answers) == len(asks)
    outcomes = Counter(a.outcome for a in answers)
    assert outcomes["claimed"] == units
    assert set(outcomes) <= {"claimed", "already_claimed", "sold_out"}
    won = [a for a in answers if a.outcome == "claimed"]
    assert len({a.user_id for a in won}) == units
    assert len({a.resource_id for a in won}) == units
    assert len({a.unit_no for a in won}) == units
    assert len({a.msg_id for a in won}) == units
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        allocated = conn.execute(
            "select count(*), count(distinct locked_by), count(distinct resource_id)"
            " from intake.allocations where status = 'locked'"
        ).fetchone()
        available = conn.execute(
            "select count(*) from intake.allocations where status = 'available'"
        ).fetchone()[0]
        rows = queue_rows(conn)
    assert allocated == (units, units, units)
    assert available == 0
    assert len(rows) == units
    assert len({message["resource_id"] for _, message, *_ in rows}) == units
    assert {msg_id for msg_id, *_ in rows} == {a.msg_id for a in won}
    for _, message, resource_id, holder, key in rows:
        assert (message["resource_id"], message["user_id"], message["idempotency_key"]) == (
            resource_id,
            holder,
            key,
        )


def test_batch_size_is_bounded_and_only_service_role_may_batch(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("gate", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        with pytest.raises(UsageError):
            claims.claim_batch(conn, "gate", [f"u{n}" for n in range(claims.MAX_BATCH + 1)])
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(
                "select * from intake.claim_resources('gate', %s)",
                ([f"u{n}" for n in range(claims.MAX_BATCH + 1)],),
            )
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("set role service_role")
        assert [a.outcome for a in claims.claim_batch(conn, "gate", ["s1", "s2"])] == [
            "claimed",
            "claimed",
        ]
    for role in ("authenticated", "anon"):
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            conn.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                claims.claim_batch(conn, "gate", ["x"])
