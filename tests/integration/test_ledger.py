"""DB2: the example ledger, the commit RPC contract, and commit_batch against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from intake_cli.engine.drain import ledger
from intake_cli.platform.errors import LedgerContractError, LedgerUnavailable

RPC = ledger.RpcName.parse("public.finalize_transaction")
USER_A = str(uuid.uuid4())
USER_B = str(uuid.uuid4())


def intent(user_id: str = "user-1", pool_id: str = "drop", unit_no: int = 1) -> dict[str, Any]:
    """An intent as the drain worker hands it over: the queued message, validated."""
    return {
        "v": 1,
        "idempotency_key": str(uuid.uuid4()),
        "pool_id": pool_id,
        "user_id": user_id,
        "resource_id": str(uuid.uuid4()),
        "unit_no": unit_no,
        "claimed_at": datetime.now(UTC).isoformat(),
        "state": "validated",
    }


@pytest.fixture
def ledger_dsn(db2_dsn: str) -> str:
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
    return db2_dsn


def commit(dsn: str, payloads: list[dict[str, Any]], rpc: ledger.RpcName = RPC):
    async def run() -> list[ledger.CommitOutcome]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await ledger.commit_batch(conn, rpc, payloads)

    return asyncio.run(run())


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


def catalog(dsn: str) -> dict[str, Any]:
    """DB2's objects, their definitions and privileges: what a no-op must leave alone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            "relations": conn.execute(
                "select n.nspname, c.relname, c.relkind, c.relacl::text, c.relrowsecurity"
                " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname in ('public', 'auth') order by 1, 2"
            ).fetchall(),
            "functions": conn.execute(
                "select p.oid::regprocedure::text, md5(p.prosrc), p.proacl::text from pg_proc p"
                " join pg_namespace n on n.oid = p.pronamespace"
                " where n.nspname in ('public', 'auth') order by 1"
            ).fetchall(),
            "policies": conn.execute(
                "select tablename, policyname, roles::text, qual from pg_policies order by 1, 2"
            ).fetchall(),
            "rows": conn.execute(
                "select (select count(*) from public.tickets),"
                " (select count(*) from public.legacy_orders)"
            ).fetchone(),
        }


def as_user(conn: psycopg.Connection, user: str | None, role: str = "authenticated") -> None:
    """What PostgREST does for a request: the role, and the verified JWT's claims."""
    conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
    claims = json.dumps({"sub": user, "role": role}) if user else ""
    conn.execute("select set_config('request.jwt.claims', %s, false)", (claims,))


# -- install -----------------------------------------------------------------


@pytest.mark.slow
def test_install_example_once_then_changes_nothing(db2_dsn):
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.example_installed(conn) is False
        assert ledger.install_example(conn) is True
        assert ledger.example_installed(conn) is True
    commit(db2_dsn, [intent(unit_no=n) for n in range(3)])
    before = catalog(db2_dsn)
    assert before["rows"] == (3, 3)
    rls = {(r[1], r[4]) for r in before["relations"] if r[2] == "r"}
    assert rls == {("legacy_orders", True), ("tickets", True)}

    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is False
    assert catalog(db2_dsn) == before


def test_install_into_a_database_with_a_clashing_table_changes_nothing(db2_dsn):
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        conn.execute("create table public.legacy_orders (ord_no int, note text)")
        with pytest.raises(LedgerContractError, match="nothing was changed") as caught:
            ledger.install_example(conn)
        assert "legacy_orders" in str(caught.value)
        leftovers = conn.execute(
            "select to_regclass('public.tickets'), to_regprocedure('auth.uid()'),"
            " to_regprocedure('public.finalize_transaction(jsonb)')"
        ).fetchone()
        assert leftovers == (None, None, None)
        assert ledger.example_installed(conn) is False


def test_tickets_join_the_supabase_realtime_publication_when_it_exists(db2_dsn, db2_cluster):
    from tests.conftest import new_database

    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        conn.execute("create publication supabase_realtime")
        assert ledger.install_example(conn) is True
        members = conn.execute(
            "select schemaname, tablename from pg_publication_tables"
            " where pubname = 'supabase_realtime'"
        ).fetchall()
    assert members == [("public", "tickets")]

    # Without the publication, installing creates none.
    elsewhere = new_database(db2_cluster)
    with psycopg.connect(elsewhere, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
        assert conn.execute("select count(*) from pg_publication").fetchone()[0] == 0


# -- commit_batch ------------------------------------------------------------


def test_a_batch_commits_in_one_transaction_and_again_only_as_duplicates(ledger_dsn):
    payloads = [intent(user_id=f"user-{n}", unit_no=n) for n in range(50)]
    first = commit(ledger_dsn, payloads)

    assert len(first) == 50
    assert all(o.ok and o.error is None for o in first)
    assert [o.result["status"] for o in first] == ["committed"] * 50
    ticket_ids = [o.result["ticket_id"] for o in first]
    assert len(set(ticket_ids)) == 50
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select t.ticket_id, t.idempotency_key::text, t.user_id, t.pool_id,"
            " t.resource_id::text, t.unit_no, o.cust_ref, o.sku, o.status, o.ext_ref::text"
            " from public.tickets t join public.legacy_orders o using (ord_no)"
        ).fetchall()
        # The fast path: every ticket written by the same transaction.
        assert conn.execute("select count(distinct xmin::text) from public.tickets").fetchone() == (
            1,
        )
    assert len(rows) == 50
    by_key = {row[1]: row for row in rows}
    for payload, outcome in zip(payloads, first, strict=True):
        row = by_key[payload["idempotency_key"]]
        # Outcomes come back in the payloads' order, not in commit order.
        assert row[0] == outcome.result["ticket_id"]
        assert row[2:6] == (
            payload["user_id"],
            payload["pool_id"],
            payload["resource_id"],
            payload["unit_no"],
        )
        assert row[6:] == (payload["user_id"], payload["pool_id"], "C", payload["resource_id"])

    again = commit(ledger_dsn, payloads)
    # The answer proves the commit: the payload's key, and who wrote the ticket.
    assert [o.result for o in again] == [
        {"status": "duplicate", "idempotency_key": p["idempotency_key"], "ticket_id": t}
        for p, t in zip(payloads, ticket_ids, strict=True)
    ]
    assert all(o.ok for o in again)
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 50
    assert scalar(ledger_dsn, "select count(*) from public.legacy_orders") == 50


def test_a_malformed_payload_fails_alone(ledger_dsn):
    good = [intent(unit_no=n) for n in range(6)]
    no_user = intent()
    del no_user["user_id"]
    bad_unit = {**intent(), "unit_no": "seven"}
    bad_key = {**intent(), "idempotency_key": "not-a-uuid"}
    numeric_user = {**intent(), "user_id": 42}
    batch = [
        good[0],
        no_user,
        good[1],
        good[2],
        bad_unit,
        good[3],
        bad_key,
        good[4],
        numeric_user,
        good[5],
        {},
    ]

    outcomes = commit(ledger_dsn, batch)

    assert [o.ok for o in outcomes] == [
        True,
        False,
        True,
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    for outcome in outcomes:
        if outcome.ok:
            assert outcome.result["status"] == "committed"
        else:
            assert outcome.result is None
            assert outcome.error.startswith("22023: finalize_transaction:")
    assert "lacks user_id" in outcomes[1].error
    assert "unit_no is malformed" in outcomes[4].error and "seven" in outcomes[4].error
    assert "idempotency_key is malformed" in outcomes[6].error
    assert "user_id must be a string" in outcomes[8].error
    assert "idempotency_key, pool_id, user_id, resource_id, unit_no, claimed_at" in (
        outcomes[10].error
    )
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        keys = {r[0] for r in conn.execute("select idempotency_key::text from public.tickets")}
        assert keys == {p["idempotency_key"] for p in good}
        assert conn.execute("select count(*) from public.legacy_orders").fetchone()[0] == 6
        # The slow path: each good payload in a transaction of its own.
        assert conn.execute("select count(distinct xmin::text) from public.tickets").fetchone() == (
            6,
        )


def test_a_serialization_failure_is_retried_per_payload_not_reported_as_db2_down(ledger_dsn):
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            "create function public.picky(payload jsonb) returns jsonb language plpgsql as $$"
            " begin"
            "   if payload ? 'conflict' then"
            "     raise exception 'simulated' using errcode = 'serialization_failure';"
            "   end if;"
            "   return public.finalize_transaction(payload);"
            " end $$"
        )
    picky = ledger.RpcName.parse("public.picky")
    outcomes = commit(ledger_dsn, [intent(), {**intent(), "conflict": True}, intent()], picky)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error == "40001: simulated"
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 2


def test_the_same_key_twice_in_one_batch_commits_once(ledger_dsn):
    payload = intent()
    outcomes = commit(ledger_dsn, [payload, intent(), dict(payload)])
    assert Counter(o.result["status"] for o in outcomes) == {"committed": 2, "duplicate": 1}
    assert outcomes[0].result["ticket_id"] == outcomes[2].result["ticket_id"]
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 2


def test_eight_connections_committing_the_same_100_keys_make_100_tickets(ledger_dsn):
    payloads = [intent(user_id=f"user-{n}", unit_no=n) for n in range(100)]

    async def herd() -> list[list[ledger.CommitOutcome]]:
        conns = [
            await psycopg.AsyncConnection.connect(ledger_dsn, autocommit=True) for _ in range(8)
        ]
        try:
            batches = []
            for seed in range(8):
                # Re-deliveries arrive in any order; every worker sees its own.
                mine = payloads[:]
                random.Random(seed).shuffle(mine)
                batches.append(mine)
            # Connected first, so the commits really overlap.
            return await asyncio.gather(
                *(ledger.commit_batch(c, RPC, b) for c, b in zip(conns, batches, strict=True))
            )
        finally:
            for conn in conns:
                await conn.close()

    results = asyncio.run(herd())

    everything = [o for outcomes in results for o in outcomes]
    assert len(everything) == 800
    assert all(o.ok for o in everything), [o.error for o in everything if not o.ok][:3]
    assert Counter(o.result["status"] for o in everything) == {
        "committed": 100,
        "duplicate": 700,
    }
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 100
    assert scalar(ledger_dsn, "select count(distinct idempotency_key) from public.tickets") == 100
    assert scalar(ledger_dsn, "select count(*) from public.legacy_orders") == 100
    # Batches lock keys in one order, so they queue behind each other instead
    # of deadlocking: whoever took the first key wrote every ticket, in one go.
    assert scalar(ledger_dsn, "select count(distinct xmin::text) from public.tickets") == 1


def test_commit_batch_with_nothing_to_commit(ledger_dsn):
    assert commit(ledger_dsn, []) == []


# -- who may see and do what ---------------------------------------------------


def test_users_see_only_their_own_tickets_and_cannot_commit(ledger_dsn):
    commit(ledger_dsn, [intent(user_id=USER_A, unit_no=n) for n in range(3)])
    commit(ledger_dsn, [intent(user_id=USER_B, unit_no=n) for n in range(3, 5)])
    commit(ledger_dsn, [intent(user_id="backend-user", unit_no=9)])
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 6

    for user, expected in ((USER_A, 3), (USER_B, 2), (None, 0)):
        with psycopg.connect(ledger_dsn, autocommit=True) as conn:
            as_user(conn, user)
            owners = conn.execute("select user_id from public.tickets").fetchall()
            assert owners == [(user,)] * expected

    for role in ("authenticated", "anon"):
        for statement, params in (
            ("select public.finalize_transaction(%s::jsonb)", (json.dumps(intent(USER_A)),)),
            ("select * from public.legacy_orders", ()),
            (
                "insert into public.tickets (idempotency_key, pool_id, user_id, resource_id,"
                " unit_no, claimed_at) values (gen_random_uuid(), 'p', %s, gen_random_uuid(),"
                " 1, now())",
                (USER_A,),
            ),
            ("delete from public.tickets", ()),
        ):
            with psycopg.connect(ledger_dsn, autocommit=True) as conn:
                as_user(conn, USER_A, role)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement, params)
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        as_user(conn, None, "anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from public.tickets")

    # The trusted backend's role is the one that may commit.
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute("set role service_role")
        result = conn.execute(
            "select public.finalize_transaction(%s::jsonb)", (json.dumps(intent(USER_B)),)
        ).fetchone()[0]
        assert result["status"] == "committed"
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 7


# -- the contract ------------------------------------------------------------


def test_check_rpc_accepts_the_example_and_explains_what_does_not_fit(ledger_dsn):
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        assert ledger.check_rpc(conn, RPC) == RPC
        assert ledger.check_rpc(conn, ledger.RpcName.parse("finalize_transaction")) == RPC

        with pytest.raises(LedgerContractError) as missing:
            ledger.check_rpc(conn, ledger.RpcName.parse("public.nope"))
        assert str(missing.value) == (
            "DB2 has no function public.nope(jsonb): install it, or set commit_rpc_name"
        )
        with pytest.raises(LedgerContractError, match=r"no function ledger\.finalize_transaction"):
            ledger.check_rpc(conn, ledger.RpcName.parse("ledger.finalize_transaction"))

        conn.execute("create function public.wrong(a int) returns int language sql as 'select a'")
        conn.execute(
            "create function public.wrong(a jsonb, b jsonb) returns int language sql as 'select 1'"
        )
        with pytest.raises(LedgerContractError) as wrong:
            ledger.check_rpc(conn, ledger.RpcName.parse("public.wrong"))
        message = str(wrong.value)
        assert "public.wrong(a integer)" in message
        assert "public.wrong(a jsonb, b jsonb)" in message
        assert "public.wrong(payload jsonb)" in message

        conn.execute("create procedure public.proc(payload jsonb) language sql as 'select 1'")
        with pytest.raises(
            LedgerContractError, match=r"public\.proc\(IN payload jsonb\) \(a procedure\)"
        ):
            ledger.check_rpc(conn, ledger.RpcName.parse("public.proc"))


def test_an_rpc_taking_json_is_called_with_json(ledger_dsn):
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            "create function public.commit_json(payload json) returns jsonb language sql"
            " as 'select public.finalize_transaction(payload::jsonb)'"
        )
        rpc = ledger.check_rpc(conn, ledger.RpcName.parse("public.commit_json"))
    assert rpc.arg_type == "json"
    outcomes = commit(ledger_dsn, [intent(), intent()], rpc)
    assert [o.result["status"] for o in outcomes] == ["committed", "committed"]


@pytest.mark.parametrize(
    "text",
    [
        "x'); drop table tickets; --",
        'public."finalize_transaction"',
        "Public.Finalize",
        "a.b.c",
        "public.",
        "",
        "finalize_transaction(payload)",
    ],
)
def test_rpc_names_that_could_reach_sql_are_refused(text):
    with pytest.raises(LedgerContractError, match="commit RPC name"):
        ledger.RpcName.parse(text)


def test_rpc_name_parses_and_quotes(db2_dsn):
    rpc = ledger.RpcName.parse("finalize_transaction")
    assert (rpc.schema, rpc.name, rpc.arg_type) == ("public", "finalize_transaction", "jsonb")
    assert str(rpc) == "public.finalize_transaction"
    with psycopg.connect(db2_dsn) as conn:
        assert ledger.RpcName.parse("ops.commit_v2").identifier().as_string(conn) == (
            '"ops"."commit_v2"'
        )
    with pytest.raises(LedgerContractError):
        ledger.RpcName("public", 'x"; drop table tickets; --')


# -- DB2 going away ------------------------------------------------------------


def test_a_lost_connection_raises_ledger_unavailable(ledger_dsn):
    payloads = [intent(unit_no=n) for n in range(5)]

    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(ledger_dsn, autocommit=True)
        try:
            pid = conn.info.backend_pid
            with psycopg.connect(ledger_dsn, autocommit=True) as admin:
                assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            with pytest.raises(LedgerUnavailable, match="DB2"):
                await ledger.commit_batch(conn, RPC, payloads)
            # Once broken, it stays unavailable rather than failing item by item.
            with pytest.raises(LedgerUnavailable):
                await ledger.commit_batch(conn, RPC, payloads)
        finally:
            await conn.close()
        with pytest.raises(LedgerUnavailable, match="closed"):
            await ledger.commit_batch(conn, RPC, payloads)

    asyncio.run(run())
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 0
    # When DB2 is back, the retried commit goes through, once.
    assert [o.result["status"] for o in commit(ledger_dsn, payloads)] == ["committed"] * 5
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 5
