"""A pool's fair opening is enforced in DB1, on every door a buyer can use.

Before opens_at the claim functions give no unit to anybody (the gateway's
batch, PostgREST's claim_resource as `authenticated`, `intake claim`); the
waiting room hands out receipts only while it is open, and closes in one
step against every join; the admission goes through the gate and nothing
else does until it is complete; `intake opening verify` replays it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from intake_cli.engine import opening
from intake_cli.platform.pgconn import async_pool
from tests.conftest import intake, pool_spec, write_config
from tests.integration.test_claims import provision
from tests.integration.test_end_user_claims import as_user


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _set_opens_at(dsn: str, pool_id: str, at: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "update intake.engine_config set opens_at = %s where pool_id = %s", (at, pool_id)
        )


def _join(conn: psycopg.Connection, pool_id: str, user: str) -> tuple:
    return conn.execute(
        "select * from intake.join_waiting_room(%s, %s)", (pool_id, user)
    ).fetchone()


def _nothing_sold(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = conn.execute(
            "select count(*) from intake.allocations where locked_by is not null"
        ).fetchone()[0]
        queued = conn.execute("select count(*) from pgmq.q_intents").fetchone()[0]
    assert (held, queued) == (0, 0)


def test_every_claim_door_refuses_before_the_opening(workdir, db1_dsn, db2_dsn):
    settings = provision(workdir, db1_dsn, db2_dsn, pool_spec("race", 10, opens_at=_in(3600)))
    buyer = str(uuid.uuid4())
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        one = conn.execute("select outcome from intake.claim_resource('race', 'u1')").fetchone()
        batch = conn.execute(
            "select outcome from intake.claim_resources('race', array['u1', 'u2', 'u3'])"
        ).fetchall()
    assert one == ("not_open",)
    assert batch == [("not_open",)] * 3
    # The path a Supabase project exposes through PostgREST.
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        as_user(conn, buyer)
        answer = conn.execute("select outcome from public.claim_resource('race')").fetchone()
        joined = conn.execute("select outcome, receipt from public.join_waiting_room('race')")
        outcome, receipt = joined.fetchone()
    assert answer == ("not_open",)
    assert outcome == "waiting" and receipt is not None
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("race", 10)])
    cli = intake("claim", "race", buyer, "--json", config=config)
    assert cli.returncode == 75, cli.stderr
    assert json.loads(cli.stdout)["outcome"] == "not_open"
    _nothing_sold(db1_dsn)
    # The room holds the PostgREST buyer under the JWT's subject, and only them.
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        room = conn.execute("select user_id, receipt from intake.waiting_room").fetchall()
        # anon has no door to the room.
        conn.execute("set role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from public.join_waiting_room('race')")
    assert room == [(buyer, receipt)]
    assert settings.pools[0].opens_at is not None


def test_the_room_closes_by_db1s_clock_and_the_gate_opens_after_the_admission(
    workdir, db1_dsn, db2_dsn
):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("race", 10, opens_at=_in(3600)))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        first = _join(conn, "race", "early-1")
        assert first[0] == "waiting"
        assert _join(conn, "race", "early-1") == first  # asking again keeps the receipt
        assert _join(conn, "race", "early-2")[0] == "waiting"
        # Before opens_at by DB1's clock the room does not close.
        seed, *_, opens_in = conn.execute(
            "select * from intake.close_waiting_room('race', 7)"
        ).fetchone()
        assert seed is None and 3500 < opens_in <= 3600
        assert conn.execute("select count(*) from intake.openings").fetchone() == (0,)

    _set_opens_at(db1_dsn, "race", _in(-1))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # Past opens_at and not yet closed: the room still takes buyers, claims wait.
        assert _join(conn, "race", "early-3")[0] == "waiting"
        claim = "select outcome from intake.claim_resource('race', %s)"
        assert conn.execute(claim, ("late-1",)).fetchone() == ("opening",)
        closed = conn.execute("select * from intake.close_waiting_room('race', 7)").fetchone()
        assert closed[:4] == (7, 3, first[2] + 2, False)
        # Closed once: a second close returns what the first recorded.
        again = conn.execute("select * from intake.close_waiting_room('race', 99)").fetchone()
        assert again[:3] == (7, 3, first[2] + 2)
        assert _join(conn, "race", "early-2")[0] == "waiting"
        assert _join(conn, "race", "late-2")[0] == "opened"
        # Only buyers waiting in the room can be admitted.
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("select * from intake.admit_from_room('race', array['late-1'], array[0])")
        shuffled = opening.order(["early-1", "early-2", "early-3"], 7)
        places = {u: n for n, u in enumerate(shuffled)}
        admitted = conn.execute(
            "select outcome from intake.admit_from_room('race', array['early-2'], %s)",
            ([places["early-2"]],),
        ).fetchall()
        assert admitted == [("claimed",)]
        # The admission's own transaction was the way past the gate, and only it.
        assert conn.execute(claim, ("late-1",)).fetchone() == ("opening",)
        assert conn.execute(
            "select admitting from intake.openings where pool_id = 'race'"
        ).fetchone() == (False,)
        conn.execute(
            "select * from intake.admit_from_room('race', array['early-1', 'early-3'], %s)",
            ([places["early-1"], places["early-3"]],),
        )
        conn.execute("select intake.complete_opening('race')")
        assert conn.execute(claim, ("late-1",)).fetchone() == ("claimed",)
        verdict = opening.verify(conn, "race")
    assert verdict.holds, verdict.problems
    assert verdict.waiting == 3 and verdict.admitted == 3


def test_receipts_and_the_closing_race_every_receipt_is_in_the_room(workdir, db1_dsn, db2_dsn):
    """Joins from many connections while the opener closes the room at opens_at:
    every buyer told `waiting` is in the set the opening recorded, and no one else."""
    provision(workdir, db1_dsn, db2_dsn, pool_spec("race", 5000, opens_at=_in(1.0)))
    answers: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def joiner(n: int) -> None:
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            k = 0
            while not stop.is_set():
                user = f"u{n}-{k}"
                k += 1
                outcome = _join(conn, "race", user)[0]
                with lock:
                    answers[user] = outcome
                if outcome == "opened":
                    break

    threads = [threading.Thread(target=joiner, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()

    async def open_it() -> None:
        pool = async_pool(db1_dsn, min_size=2, max_size=2, open=False)
        await pool.open()
        try:
            await opening.open_pool(pool, "race")
        finally:
            await pool.close()

    asyncio.run(open_it())
    stop.set()
    for t in threads:
        t.join(30)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        room = {
            user
            for (user,) in conn.execute(
                "select w.user_id from intake.waiting_room w join intake.openings o"
                " using (pool_id) where w.arrival_no <= o.last_arrival_no"
            ).fetchall()
        }
        waiting, admitted = conn.execute(
            "select o.waiting, count(w.admitted_no) from intake.openings o"
            " join intake.waiting_room w using (pool_id) group by o.waiting"
        ).fetchone()
        verdict = opening.verify(conn, "race")
    given = {user for user, outcome in answers.items() if outcome == "waiting"}
    assert given == room
    assert len(given) > 100 and waiting == admitted == len(given)
    assert verdict.holds, verdict.problems


def test_verify_says_no_when_the_record_does_not_replay(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("race", 100, opens_at=_in(3600)))
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("race", 100, opens_at=_in(3600))])
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        for n in range(20):
            _join(conn, "race", f"buyer-{n}")
    before = intake("opening", "verify", "race", "--json", config=config)
    assert before.returncode == 1
    assert json.loads(before.stdout)["problems"] == [
        "the opening has not begun: nothing to replay yet"
    ]
    _set_opens_at(db1_dsn, "race", _in(-1))
    opened = intake("opening", "open", "race", config=config)
    assert opened.returncode == 0, opened.stderr
    good = intake("opening", "verify", "race", "--json", config=config)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["holds"] is True
    assert json.loads(good.stdout)["waiting"] == 20

    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # Swap two admitted buyers' places; a receipt written after the close; a
        # unit taken by an outsider before the admission completed.
        conn.execute(
            "update intake.waiting_room set admitted_no = case admitted_no when 0 then 1"
            " else 0 end where admitted_no in (0, 1)"
        )
        conn.execute("insert into intake.waiting_room (pool_id, user_id) values ('race', 'cheat')")
        conn.execute(
            "update intake.allocations set locked_by = 'outsider', status = 'locked',"
            " locked_at = '2000-01-01' where pool_id = 'race' and unit_no = 100"
        )
    bad = intake("opening", "verify", "race", "--json", config=config)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["problems"] == [
        "1 receipts were handed out after the room closed",
        "2 admitted buyers are not where the stored seed places them",
        "1 units are held by buyers outside the room, taken before the admission was complete",
    ]
    unknown = intake("opening", "verify", "nope", config=config)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
