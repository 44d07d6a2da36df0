"""The commit RPC's contract, held by intake against real PostgreSQL.

- Its shape: a function of the ledger's own (not PostgreSQL's), taking one
  json/jsonb argument and answering one json/jsonb value (check_rpc).
- Its answer proves the commit: an object with the payload's idempotency_key
  and status committed or duplicate; anything else is not a commit.
- One payload's error, a statement timeout included, is that payload's alone;
  only a lost connection is "DB2 unavailable". Each commit statement is
  bounded by a statement timeout that does not outlive its transaction.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from intake_cli.engine.drain import ledger
from intake_cli.platform.errors import LedgerContractError, LedgerUnavailable
from tests.integration.test_ledger import RPC, commit, intent, scalar

# The example's commit RPC body before each commit wrote its ticket once
# (sql/templates/db2/finalize_transaction.sql at 5266937).
SUPERSEDED = (Path(__file__).parent / "finalize_superseded.sql").read_text()


@pytest.fixture
def ledger_dsn(db2_dsn: str) -> str:
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
    return db2_dsn


def create(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def commit_with(
    dsn: str, payloads: list[dict[str, Any]], rpc: ledger.RpcName, timeout_s: float | None
) -> tuple[list[ledger.CommitOutcome], str]:
    """commit_batch on one connection; also what statement_timeout that session has after."""

    async def run() -> tuple[list[ledger.CommitOutcome], str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            outcomes = await ledger.commit_batch(conn, rpc, payloads, timeout_s=timeout_s)
            cur = await conn.execute("show statement_timeout")
            return outcomes, (await cur.fetchone())[0]

    return asyncio.run(run())


# -- the shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "pg_catalog.jsonb_typeof",
        "pg_catalog.jsonb_strip_nulls",
        "pg_catalog.to_jsonb",
        "information_schema._pg_truetypid",
        "pg_toast.anything",
    ],
)
@pytest.mark.slow
def test_postgresqls_own_functions_are_never_the_commit_rpc(ledger_dsn, name):
    with (
        psycopg.connect(ledger_dsn, autocommit=True) as conn,
        pytest.raises(LedgerContractError) as refused,
    ):
        ledger.check_rpc(conn, ledger.RpcName.parse(name))
    assert str(refused.value).startswith(f"{name} cannot be the commit RPC: ")
    assert "PostgreSQL's own schema" in str(refused.value)


def test_an_rpc_must_answer_json(ledger_dsn):
    create(
        ledger_dsn,
        "create function public.typeof(payload jsonb) returns text language sql"
        " as 'select jsonb_typeof(payload)'",
        "create function public.nothing(payload jsonb) returns void language sql as ''",
        "create function public.ok(payload jsonb) returns boolean language sql as 'select true'",
        "create function public.answers_json(payload json) returns json language sql"
        " as 'select public.finalize_transaction(payload::jsonb)::json'",
    )
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        for name, returns in (("typeof", "text"), ("nothing", "void"), ("ok", "boolean")):
            with pytest.raises(LedgerContractError) as refused:
                ledger.check_rpc(conn, ledger.RpcName.parse(f"public.{name}"))
            message = str(refused.value)
            assert f"DB2's public.{name} cannot be the commit RPC" in message
            assert f"public.{name}(payload jsonb) (returns {returns})" in message
            assert '"status": "committed" or "duplicate"' in message
        json_rpc = ledger.check_rpc(conn, ledger.RpcName.parse("public.answers_json"))
    assert json_rpc.arg_type == "json"
    assert [o.ok for o in commit(ledger_dsn, [intent(), intent()], json_rpc)] == [True, True]


# -- the proof of commit ---------------------------------------------------------


ANSWERS = {
    # name: the function's body (payload is $1), what the outcome's error says
    "null": ("select null::jsonb", "got null"),
    "wrong_key": (
        "select jsonb_build_object('status', 'committed', 'idempotency_key', gen_random_uuid())",
        "does not prove the commit",
    ),
    "no_key": ("select jsonb_build_object('status', 'committed')", "does not prove the commit"),
    "bad_status": (
        "select jsonb_build_object('status', 'queued', 'idempotency_key',"
        " $1 ->> 'idempotency_key')",
        "does not prove the commit",
    ),
    "not_an_object": ("select to_jsonb('committed'::text)", 'got "committed"'),
    "an_array": ("select jsonb_build_array($1 ->> 'idempotency_key')", "got ["),
    # Handing the payload back proves nothing: it has a key, but no status.
    "echo": ("select $1", "does not prove the commit"),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_an_answer_that_does_not_prove_the_commit_is_not_a_commit(ledger_dsn, answer):
    body, fragment = ANSWERS[answer]
    create(
        ledger_dsn,
        f"create function public.rpc_{answer}(payload jsonb) returns jsonb language sql"
        f" as $$ {body} $$",
    )
    rpc = ledger.RpcName.parse(f"public.rpc_{answer}")
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        assert ledger.check_rpc(conn, rpc) == rpc
    outcomes = commit(ledger_dsn, [intent(), intent()], rpc)
    assert [o.ok for o in outcomes] == [False, False]
    for outcome in outcomes:
        assert outcome.error.startswith("the answer does not prove the commit: expected {")
        assert fragment in outcome.error


def test_the_example_proves_both_the_first_commit_and_the_replay(ledger_dsn):
    payloads = [intent(unit_no=n) for n in range(3)]
    for expected in ("committed", "duplicate"):
        outcomes = commit(ledger_dsn, payloads)
        assert all(o.ok and o.error is None for o in outcomes)
        assert [(o.result["status"], o.result["idempotency_key"]) for o in outcomes] == [
            (expected, p["idempotency_key"]) for p in payloads
        ]


def test_intakes_earlier_example_is_replaced_in_place_and_refused_until_then(ledger_dsn):
    old = (
        "create or replace function public.finalize_transaction(payload jsonb) returns jsonb"
        " language plpgsql volatile security definer set search_path = pg_catalog, pg_temp"
        " as $finalize${}$finalize$"
    )
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        # The body intake installed before its answer carried the key.
        earlier = SUPERSEDED.replace(
            "        return jsonb_build_object(\n"
            "            'status', 'duplicate', 'idempotency_key', v_key, 'ticket_id', v_ticket);",
            "        return jsonb_build_object('status', 'duplicate', 'ticket_id', v_ticket);",
        ).replace(
            "    return jsonb_build_object(\n"
            "        'status', 'committed', 'idempotency_key', v_key, 'ticket_id', v_ticket,"
            " 'ord_no', v_ord);",
            "    return jsonb_build_object('status', 'committed', 'ticket_id', v_ticket,"
            " 'ord_no', v_ord);",
        )
        assert earlier != SUPERSEDED
        conn.execute(old.format(earlier))
        commit(ledger_dsn, [intent()])
        with pytest.raises(LedgerContractError, match="intake's example ledger from before"):
            ledger.check_rpc(conn, RPC)
        assert ledger.example_installed(conn) is False
        assert ledger.install_example(conn) is True
        assert ledger.example_installed(conn) is True
        assert ledger.check_rpc(conn, RPC) == RPC
        grants = conn.execute(
            "select proacl::text from pg_proc where proname = 'finalize_transaction'"
        ).fetchone()[0]
    acl = grants.strip("{}").split(",")
    assert any(e.startswith("service_role=X/") for e in acl)
    assert not any(entry.startswith("=") for entry in acl)
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 1
    assert all(o.ok for o in commit(ledger_dsn, [intent()]))


def test_the_example_that_wrote_each_ticket_twice_is_replaced_and_legacy_orders_get_rls(
    ledger_dsn,
):
    """The example before one change per commit (insert, then update of ord_no)
    still proves its commits; `intake up` replaces it in place all the same."""
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            "create or replace function public.finalize_transaction(payload jsonb) returns jsonb"
            " language plpgsql volatile security definer set search_path = pg_catalog, pg_temp"
            f" as $finalize${SUPERSEDED}$finalize$"
        )
        conn.execute("alter table public.legacy_orders disable row level security")
        commit(ledger_dsn, [intent()])
        assert ledger.check_rpc(conn, RPC) == RPC
        assert ledger.example_installed(conn) is False
        assert ledger.install_example(conn) is True
        assert ledger.example_installed(conn) is True
        assert conn.execute(
            "select relrowsecurity from pg_class where oid = 'public.legacy_orders'::regclass"
        ).fetchone()[0]
    assert all(o.ok for o in commit(ledger_dsn, [intent()]))
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 2
    assert (
        scalar(
            ledger_dsn,
            "select count(*) from public.tickets t join public.legacy_orders o using (ord_no)",
        )
        == 2
    )


# -- one payload's error stays its own; the statement timeout --------------------

PICKY = """
create function public.picky(payload jsonb) returns jsonb language plpgsql as $$
begin
    if payload ->> 'user_id' = 'canceled' then
        raise exception 'canceling statement due to statement timeout'
              using errcode = 'query_canceled';
    elsif payload ->> 'user_id' = 'slow' then
        perform pg_sleep(12);
    end if;
    return public.finalize_transaction(payload);
end $$
"""


def test_a_payload_raising_57014_fails_alone_and_db2_is_not_taken_for_down(ledger_dsn):
    create(ledger_dsn, PICKY)
    payloads = [intent(user_id=u) for u in ("a", "b", "canceled", "c", "d")]
    outcomes = commit(ledger_dsn, payloads, ledger.RpcName.parse("public.picky"))
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert outcomes[2].error.startswith("57014: canceling statement due to statement timeout")
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 4


@pytest.mark.serial
def test_a_slow_payload_is_cancelled_by_the_statement_timeout_and_fails_alone(ledger_dsn):
    create(ledger_dsn, PICKY)
    payloads = [intent(user_id=u) for u in ("a", "b", "slow", "c", "d")]
    started = time.monotonic()
    outcomes, after = commit_with(ledger_dsn, payloads, ledger.RpcName.parse("public.picky"), 1)
    took = time.monotonic() - started

    # The batch statement, then the slow payload's own: twice the timeout, not 12 s.
    assert took < 4, took
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert "57014" in outcomes[2].error
    assert "db2.commit_timeout_seconds, 1 s" in outcomes[2].error
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 4
    # SET LOCAL: the session's own setting is untouched afterwards.
    assert after == "0"


def test_no_timeout_leaves_db2s_own_setting_in_force(ledger_dsn):
    create(ledger_dsn, PICKY)
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        database = conn.info.dbname
        conn.execute(
            sql.SQL("alter database {} set statement_timeout = '1s'").format(
                sql.Identifier(database)
            )
        )
    started = time.monotonic()
    outcomes, after = commit_with(
        ledger_dsn, [intent(user_id="slow")], ledger.RpcName.parse("public.picky"), None
    )
    assert time.monotonic() - started < 4
    assert [o.ok for o in outcomes] == [False]
    assert outcomes[0].error.startswith("57014")
    assert after == "1s"


def test_a_connection_lost_mid_batch_is_still_db2_unavailable(ledger_dsn):
    create(ledger_dsn, PICKY)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(ledger_dsn, autocommit=True) as conn:
            pid = conn.info.backend_pid

            async def kill() -> None:
                await asyncio.sleep(0.5)
                with psycopg.connect(ledger_dsn, autocommit=True) as admin:
                    admin.execute("select pg_terminate_backend(%s)", (pid,))

            killer = asyncio.create_task(kill())
            with pytest.raises(LedgerUnavailable, match="DB2"):
                await ledger.commit_batch(
                    conn,
                    ledger.RpcName.parse("public.picky"),
                    [intent(), intent(user_id="slow")],
                    timeout_s=10,
                )
            await killer

    asyncio.run(run())
    assert scalar(ledger_dsn, "select count(*) from public.tickets") == 0
