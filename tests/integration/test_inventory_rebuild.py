"""intake.rebuild_inventory against a real DB1: the inventory a crash empties
comes back exactly from the durable facts.

A crash is reproduced here the way PostgreSQL's recovery treats unlogged
relations: allocations, released_units and inventory_ready emptied, the
pool's unlogged sequence back at its start. The real crash, with real
processes, is tests/acceptance/test_crash_recovery.py.
"""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest
from psycopg.types.json import Jsonb

from intake_cli.engine import claims, recovery
from tests.conftest import pool_spec
from tests.integration.test_claims import provision


def lose_volatile_state(conn: psycopg.Connection) -> None:
    conn.execute("truncate intake.allocations, intake.released_units, intake.inventory_ready")
    conn.execute("select setval(unit_seq, 1, false) from intake.engine_config")


def inventory(conn: psycopg.Connection) -> dict[int, tuple]:
    return {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            "select unit_no, resource_id::text, status::text, locked_by, idempotency_key::text"
            " from intake.allocations where pool_id = 'drop'"
        )
    }


def released(conn: psycopg.Connection) -> set[int]:
    return {r[0] for r in conn.execute("select unit_no from intake.released_units")}


def finish(conn: psycopg.Connection, step: str, done: list[claims.Claim], **extra: object) -> None:
    """Run one of the drain's DB1 steps on some claims, as a worker would."""
    columns = {
        "queue": "intents",
        "msg_ids": [c.msg_id for c in done],
        "keys": [str(c.idempotency_key) for c in done],
        "pool_ids": [c.pool_id for c in done],
        "unit_nos": [c.unit_no for c in done],
    }
    if step == "committed":
        conn.execute(
            "select intake.finish_committed(%(queue)s, %(msg_ids)s, %(keys)s::uuid[],"
            " %(pool_ids)s, %(unit_nos)s)",
            columns,
        )
    elif step == "rejected":
        conn.execute(
            "select intake.finish_rejected(%(queue)s, %(msg_ids)s, %(keys)s::uuid[],"
            " %(pool_ids)s, %(unit_nos)s, %(reasons)s, %(calls)s)",
            {**columns, "reasons": ["declined"] * len(done), "calls": [1] * len(done)},
        )
    elif step == "dead":
        intents = conn.execute(
            "select array_agg(message order by msg_id) from pgmq.q_intents where msg_id = any(%s)",
            (columns["msg_ids"],),
        ).fetchone()[0]
        n = len(done)
        conn.execute(
            "select intake.dead_letter(%(queue)s, 'intents_dlq', %(msg_ids)s, %(intents)s,"
            " %(keys)s::uuid[], %(pool_ids)s, %(states)s, %(attempts)s, %(calls)s, %(errors)s)",
            {
                **columns,
                "intents": [Jsonb(i) for i in intents],
                "states": ["queued"] * n,
                "attempts": [3] * n,
                "calls": [3] * n,
                "errors": ["HTTP 503"] * n,
            },
        )


def test_rebuild_restores_every_unit_holding_and_number(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 50))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        got = claims.claim_batch(conn, "drop", [f"u{n}" for n in range(30)])
        finish(conn, "committed", got[:10])
        finish(conn, "rejected", got[10:15])
        finish(conn, "dead", got[15:18])
        later = claims.claim(conn, "drop", "late-buyer")
        assert (later.outcome, later.unit_no) == ("claimed", 31)
        before, before_released = inventory(conn), released(conn)
        assert len(before_released) == 5

        lose_volatile_state(conn)
        # No unit and no `sold_out` for anyone while the inventory is gone.
        assert claims.claim(conn, "drop", "u3").outcome == "recovering"
        assert claims.claim(conn, "drop", "newcomer").outcome == "recovering"
        assert {c.outcome for c in claims.claim_batch(conn, "drop", ["x", "u4"])} == {"recovering"}
        assert recovery.lost_pools(conn) == ["drop"]

        rebuilt = recovery.rebuild(conn, "drop", "test")
        assert rebuilt is not None
        assert (rebuilt.units, rebuilt.consumed, rebuilt.locked, rebuilt.released) == (
            50,
            10,
            16,  # 12 queued (3 of them dead-lettered) + the later buyer
            5,
        )
        assert (rebuilt.high_water, rebuilt.intents, rebuilt.conflicts) == (31, 31, 0)
        assert inventory(conn) == before
        assert released(conn) == before_released
        assert recovery.rebuild(conn, "drop", "test") is None  # whole: left alone
        assert recovery.lost_pools(conn) == []

        # The buyers' holdings are back, and numbering resumes past the mark.
        again = claims.claim(conn, "drop", "u3")
        assert (again.outcome, again.unit_no) == ("already_claimed", got[3].unit_no)
        fresh = claims.claim_batch(conn, "drop", [f"n{n}" for n in range(24)])
        assert Counter(c.outcome for c in fresh) == {"claimed": 24}
        assert [c.unit_no for c in fresh[:19]] == list(range(32, 51))
        assert {c.unit_no for c in fresh[19:]} == before_released
        assert claims.claim(conn, "drop", "one-too-many").outcome == "sold_out"


def test_malformed_messages_never_stop_a_rebuild(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        claims.claim(conn, "drop", "real")
        for junk in (
            {"pool_id": "drop", "unit_no": "1 or 1=1", "idempotency_key": "x"},
            {"pool_id": "drop", "unit_no": 2, "idempotency_key": "not-a-uuid"},
            {"pool_id": "drop", "unit_no": 10**30, "claimed_at": "soon"},
            {"pool_id": "drop"},
            [1, 2, 3],
        ):
            conn.execute("select pgmq.send('intents', %s)", (Jsonb(junk),))
        lose_volatile_state(conn)
        rebuilt = recovery.rebuild(conn, "drop", "test")
        assert rebuilt is not None and (rebuilt.locked, rebuilt.intents) == (1, 1)
        assert Counter(v[1] for v in inventory(conn).values()) == {"locked": 1, "available": 9}


def test_dry_run_plan_matches_the_rebuild(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 40))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        got = claims.claim_batch(conn, "drop", [f"u{n}" for n in range(20)])
        finish(conn, "committed", got[:5])
        finish(conn, "rejected", got[5:8])
        lose_volatile_state(conn)
        plan = recovery.plan(conn, "drop")
        assert plan.lost and inventory(conn) == {}
        rebuilt = recovery.rebuild(conn, "drop", "test")
        assert rebuilt is not None
        assert (plan.units, plan.locked, plan.consumed, plan.released, plan.high_water) == (
            rebuilt.units,
            rebuilt.locked,
            rebuilt.consumed,
            rebuilt.released,
            rebuilt.high_water,
        )


@pytest.mark.parametrize("limit", [1, 3])
def test_per_buyer_limit_holds_across_a_rebuild(workdir, db1_dsn, db2_dsn, limit):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 30, per_user_limit=limit))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        for _ in range(limit):
            assert claims.claim(conn, "drop", "greedy").outcome == "claimed"
        lose_volatile_state(conn)
        recovery.rebuild(conn, "drop", "test")
        answer = claims.claim(conn, "drop", "greedy").outcome
        assert answer == ("already_claimed" if limit == 1 else "limit_reached")
        held = conn.execute(
            "select count(*) from intake.allocations where locked_by = 'greedy'"
        ).fetchone()[0]
        assert held == limit


def test_the_maintenance_job_rebuilds_a_lost_pool(workdir, db1_dsn, db2_dsn):
    """What pg_cron runs every minute: the sale resumes with no worker and no operator."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 20))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        claims.claim_batch(conn, "drop", ["a", "b", "c"])
        before = inventory(conn)
        lose_volatile_state(conn)
        conn.execute("select intake.maintain_telemetry()")
        assert inventory(conn) == before
        assert recovery.last_rebuilds(conn)["drop"].trigger == "maintenance"
        assert claims.claim(conn, "drop", "d").unit_no == 4


@pytest.mark.parametrize("how", ["single", "batched"])
def test_a_claim_racing_the_rebuilds_commit_leaves_no_unit_off_sale(workdir, db1_dsn, db2_dsn, how):
    """A claim that runs after the rebuild set the unit sequence but before it
    committed must not draw a number it cannot use: that unit would stay
    available below the sequence, off the release list, and a later buyer
    would be told `sold_out` while it remained (seen in a real crash run)."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 10))
    with (
        psycopg.connect(db1_dsn, autocommit=True) as conn,
        psycopg.connect(db1_dsn) as rebuilder,
    ):
        claims.claim_batch(conn, "drop", ["a", "b", "c"])
        lose_volatile_state(conn)
        # The rebuild has run, sequence set, and has not committed yet.
        rebuilder.execute("select * from intake.rebuild_inventory('drop', 'test')").fetchall()
        racer = (
            claims.claim(conn, "drop", "racer")
            if how == "single"
            else claims.claim_batch(conn, "drop", ["racer"])[0]
        )
        assert racer.outcome == "recovering"
        rebuilder.commit()

        buyers = [f"late-{n}" for n in range(8)]
        answers = [claims.claim(conn, "drop", user).outcome for user in buyers]
        assert answers == ["claimed"] * 7 + ["sold_out"]
        left = conn.execute(
            "select count(*) from intake.allocations where pool_id = 'drop'"
            " and status = 'available'"
        ).fetchone()[0]
        assert left == 0


@pytest.mark.parametrize("how", ["single", "batched"])
def test_a_released_unit_held_by_a_claim_that_rolls_back_is_not_sold_out(
    workdir, db1_dsn, db2_dsn, how
):
    """The last unit on sale is on the release list and another claim holds
    its entry: that claim may still roll back, so a claim meanwhile waits for
    it and takes the unit, rather than answer `sold_out` while it remains."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 3))
    with (
        psycopg.connect(db1_dsn, autocommit=True) as conn,
        psycopg.connect(db1_dsn) as holder,
    ):
        got = claims.claim_batch(conn, "drop", ["a", "b", "c"])
        finish(conn, "rejected", got[1:2])
        assert released(conn) == {2}
        holder.execute("select from intake.released_units for update")

        answers: list[claims.Claim] = []

        def late_claim() -> None:
            with psycopg.connect(db1_dsn, autocommit=True) as other:
                if how == "single":
                    answers.append(claims.claim(other, "drop", "late"))
                else:
                    answers.extend(claims.claim_batch(other, "drop", ["late"]))

        waiting = threading.Thread(target=late_claim)
        waiting.start()
        waiting.join(1)
        assert waiting.is_alive(), f"answered while the entry was held: {answers}"
        holder.rollback()
        waiting.join(10)
        assert [(a.outcome, a.unit_no) for a in answers] == [("claimed", 2)]
        assert claims.claim(conn, "drop", "later").outcome == "sold_out"


def race_two_batches(
    db1_dsn: str, open_batch: psycopg.Connection, buyers: list[str], more: list[str]
) -> tuple[list[claims.Claim], list[claims.Claim]]:
    """`buyers` claim as one batch in a thread; two seconds later the open
    transaction's batch claims `more` and commits. Both must answer (no
    deadlock, no error); returns their answers."""
    answers: list[claims.Claim] = []
    errors: list[BaseException] = []

    def batch_of_buyers() -> None:
        try:
            with psycopg.connect(db1_dsn, autocommit=True) as other:
                answers.extend(claims.claim_batch(other, "drop", buyers))
        except psycopg.Error as exc:
            errors.append(exc)

    batch = threading.Thread(target=batch_of_buyers)
    batch.start()
    batch.join(2)
    second = claims.claim_batch(open_batch, "drop", more)
    open_batch.commit()
    batch.join(10)
    assert not batch.is_alive() and errors == []
    return answers, second


def test_two_batches_sharing_the_last_released_units_do_not_deadlock(workdir, db1_dsn, db2_dsn):
    """Two batches each take one of the last released units and want more.
    The batch that holds an entry must not wait for the other's: the other
    may be waiting for it, and PostgreSQL would end that by aborting one
    whole batch (every buyer in it answered with an error)."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 4))
    with (
        psycopg.connect(db1_dsn, autocommit=True) as conn,
        psycopg.connect(db1_dsn) as open_batch,
    ):
        got = claims.claim_batch(conn, "drop", ["a", "b", "c", "d"])
        finish(conn, "rejected", got[1:3])
        assert released(conn) == {2, 3}
        # A batch in an open transaction holds one entry (a gateway batch
        # that has not committed yet).
        first = claims.claim_batch(open_batch, "drop", ["b1"])
        assert [a.outcome for a in first] == ["claimed"]

        # The open batch wants one more unit while the other holds the last entry.
        answers, second = race_two_batches(db1_dsn, open_batch, ["a1", "a2"], ["b2"])
        assert sorted(a.outcome for a in answers) == ["claimed", "sold_out"]
        assert [a.outcome for a in second] == ["sold_out"]
        units = inventory(conn)
        assert sorted(s for _, s, *_ in units.values()) == ["locked"] * 4
        assert released(conn) == set()


def test_a_grown_pools_new_units_have_one_way_in_and_batches_do_not_deadlock(
    workdir, db1_dsn, db2_dsn
):
    """A pool that grows after its sequence passed the old end puts the new
    units on the release list. Had numbers kept reaching them too, one batch
    could take a unit by number while another took its release-list entry,
    each then waiting for the other's row: a deadlock PostgreSQL ends by
    aborting one whole batch."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 3))
    with (
        psycopg.connect(db1_dsn, autocommit=True) as conn,
        psycopg.connect(db1_dsn) as open_batch,
    ):
        assert [a.outcome for a in claims.claim_batch(conn, "drop", ["a", "b", "c", "d"])] == [
            "claimed", "claimed", "claimed", "sold_out",
        ]  # fmt: skip
        provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 6))
        assert released(conn) == {4, 5, 6}
        first = claims.claim_batch(open_batch, "drop", ["b1"])
        assert [a.outcome for a in first] == ["claimed"]

        answers, second = race_two_batches(db1_dsn, open_batch, ["a1", "a2", "a3"], ["b2"])
        assert sorted(a.outcome for a in [*answers, *second]) == [
            "claimed", "claimed", "sold_out", "sold_out",
        ]  # fmt: skip
        units = inventory(conn)
        assert sorted(s for _, s, *_ in units.values()) == ["locked"] * 6
        assert len({holder for *_, holder, _ in units.values()}) == 6
        assert released(conn) == set()


def test_the_sweep_for_skipped_units_passes_over_a_claim_in_flight(workdir, db1_dsn, db2_dsn):
    """A unit a claim has taken but not yet committed looks available to the
    sweep; listing it would give the unit a second way in (see above)."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 3))
    with (
        psycopg.connect(db1_dsn, autocommit=True) as conn,
        psycopg.connect(db1_dsn) as in_flight,
    ):
        claims.claim_batch(conn, "drop", ["a"])
        taken = claims.claim_batch(in_flight, "drop", ["b"])
        assert [(a.outcome, a.unit_no) for a in taken] == [("claimed", 2)]
        swept = conn.execute("select intake.recover_skipped_units('drop')").fetchone()[0]
        assert (swept, released(conn)) == (0, set())
        in_flight.rollback()
        # Now a true gap: the rolled-back claim drew number 2.
        swept = conn.execute("select intake.recover_skipped_units('drop')").fetchone()[0]
        assert (swept, released(conn)) == (1, {2})
