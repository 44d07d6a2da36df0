"""db2.commit_timeout_seconds is what one payload may cost its batch in all, not per statement.

A commit RPC that never returns for one payload is cancelled once, in the
batch statement, and that payload is not called again in the same batch:
the batch is held about the timeout, not twice it, and every other payload
of the batch commits in it, once (docs/commit-rpc.md, "The statement
timeout").
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from intake_cli.engine.drain import ledger
from tests.integration.test_ledger import intent

# Each test weighs payloads in fractions of the timeout: a loaded machine could tip them.
pytestmark = pytest.mark.serial

SLOW_RPC = ledger.RpcName.parse("public.slow_finalize")
T = 1.0


@pytest.fixture
def slow_ledger(db2_dsn: str) -> str:
    """The example ledger behind an RPC that sleeps `payload->>'sleep_s'` seconds first."""
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
        conn.execute(
            "create function public.slow_finalize(payload jsonb) returns jsonb language plpgsql"
            " as $$ begin perform pg_sleep(coalesce((payload ->> 'sleep_s')::float8, 0));"
            " return public.finalize_transaction(payload); end $$"
        )
    return db2_dsn


def payloads_sleeping(sleeps: list[float]) -> list[dict[str, Any]]:
    """One payload per entry, in the order DB2 calls them (by key), each sleeping so long."""
    keys = sorted(str(uuid.uuid4()) for _ in sleeps)
    made = []
    for n, (key, sleep_s) in enumerate(zip(keys, sleeps, strict=True)):
        payload = {**intent(f"user-{n}", unit_no=n + 1), "idempotency_key": key}
        if sleep_s:
            payload["sleep_s"] = sleep_s
        made.append(payload)
    # Handed over in another order than DB2's: the culprit is found by call order.
    return made[1::2] + made[::2]


def commit(
    dsn: str, payloads: list[dict[str, Any]], *, autocommit: bool = True
) -> tuple[list[ledger.CommitOutcome], float]:
    async def run() -> tuple[list[ledger.CommitOutcome], float]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit) as conn:
            started = time.monotonic()
            outcomes = await ledger.commit_batch(conn, SLOW_RPC, payloads, timeout_s=T)
            return outcomes, time.monotonic() - started

    return asyncio.run(run())


def tickets(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select idempotency_key::text, count(*) from public.tickets group by 1"
        ).fetchall()
    return dict(rows)


def sleeping_sessions(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where query like '%%slow_finalize%%'"
            " and state = 'active' and pid <> pg_backend_pid()"
        ).fetchone()[0]


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_a_payload_that_never_returns_holds_its_batch_one_timeout(
    slow_ledger, position, autocommit
):
    sleeps = [0.0] * 5
    sleeps[position] = 60.0
    payloads = payloads_sleeping(sleeps)
    slow = next(p for p in payloads if "sleep_s" in p)

    outcomes, held = commit(slow_ledger, payloads, autocommit=autocommit)

    # Old code: the batch statement's T, then the payload's own T again.
    assert held < 1.5 * T, held
    by_key = {p["idempotency_key"]: o for p, o in zip(payloads, outcomes, strict=True)}
    failed = by_key.pop(slow["idempotency_key"])
    assert not failed.ok
    assert failed.error.startswith("57014: canceling statement due to statement timeout")
    assert "db2.commit_timeout_seconds, 1 s" in failed.error
    assert all(o.ok and o.result["status"] == "committed" for o in by_key.values()), by_key
    assert tickets(slow_ledger) == {key: 1 for key in by_key}
    assert sleeping_sessions(slow_ledger) == 0


def test_timely_payloads_whose_sum_passes_the_timeout_all_commit_in_the_batch(slow_ledger):
    """Three payloads of 0.45 T each: the statement runs out during the third.

    The two that answered in the statement take 0.9 T again alone, so the
    third is charged only the 0.1 T it had run: it is retried alone and
    commits. No payload loses an attempt for the others' time.
    """
    payloads = payloads_sleeping([0.45 * T, 0.45 * T, 0.45 * T, 0.0])

    outcomes, held = commit(slow_ledger, payloads)

    assert all(o.ok for o in outcomes), outcomes
    assert tickets(slow_ledger) == {p["idempotency_key"]: 1 for p in payloads}
    # The statement's T, then each payload once alone (3 x 0.45 T).
    assert held < 2.7 * T, held


def test_a_payload_refused_fast_is_retried_alone_with_the_rest_of_its_timeout(slow_ledger):
    """An error that is not a timeout leaves the payload most of its allowance: retried alone."""
    with psycopg.connect(slow_ledger, autocommit=True) as conn:
        conn.execute(
            "create or replace function public.slow_finalize(payload jsonb) returns jsonb"
            " language plpgsql as $$ begin"
            " if payload ? 'refuse' then"
            "   raise exception 'refused: %', payload ->> 'user_id';"
            " end if;"
            " return public.finalize_transaction(payload); end $$"
        )
    payloads = payloads_sleeping([0.0] * 4)
    payloads[1]["refuse"] = True

    outcomes, held = commit(slow_ledger, payloads)

    assert held < 0.5 * T, held
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert outcomes[1].error == f"P0001: refused: {payloads[1]['user_id']}"
    assert tickets(slow_ledger) == {
        p["idempotency_key"]: 1 for n, p in enumerate(payloads) if n != 1
    }
