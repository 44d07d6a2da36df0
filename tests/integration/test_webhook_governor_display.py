"""The webhook governor read where the operator looks, against a real DB1: the
reading every face shares, `intake status`'s figures, watch's frame, and the
outflow the gateway reckons a buyer's ETA from."""

from __future__ import annotations

import asyncio
import io

import psycopg
import pytest
from rich.console import Console

from intake_cli.engine import claim_views, lifecycle, telemetry
from intake_cli.faces import watch
from tests.conftest import pool_spec
from tests.integration.test_claims import provision

REPORT = "select * from intake.report_webhook_calls(%s, %s, %s, %s, %s)"


def report(conn, pool, ok=0, throttled=0, failed=0, retry_after=None) -> tuple:
    return conn.execute(REPORT, (pool, ok, throttled, failed, retry_after)).fetchone()


def last_second(conn, pool, ok: int, throttled: int) -> None:
    """The governor's previous one-second window, as if the provider had answered so."""
    conn.execute(
        "update intake.webhook_governors g set ok_prev = %s, throttled_prev = %s,"
        " failed_prev = 0, window_start = clock_timestamp()"
        " from intake.engine_config c"
        " where c.pool_id = %s and g.webhook_url = c.validation_webhook_url",
        (ok, throttled, pool),
    )


@pytest.fixture
def event(workdir, db1_dsn, db2_dsn):
    # Each pool its own provider: pools sharing a URL share a governor.
    settings = provision(
        workdir,
        db1_dsn,
        db2_dsn,
        pool_spec("paid", 50, validation_webhook_url="http://127.0.0.1:9/paid"),
        pool_spec("down", 50, validation_webhook_url="http://127.0.0.1:9/down"),
        pool_spec("free", 50, validation_webhook_url="http://127.0.0.1:9/free"),
    )
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        yield settings, conn


def throttle_and_break(conn) -> None:
    """`paid`: 429s with a Retry-After after 300 answered calls; `down`: its breaker open."""
    report(conn, "paid", ok=300)
    report(conn, "paid", throttled=20, retry_after=30)
    last_second(conn, "paid", ok=30, throttled=10)
    assert report(conn, "down", failed=200)[:2] == ("open", True)


def test_status_reads_each_pools_governor_live(event):
    settings, conn = event
    quiet = {p["pool_id"]: p["webhook"] for p in lifecycle.status(settings)["pools"]}
    assert quiet["free"] == {
        "configured_rate": 0,
        "governed_rate": None,
        "learned_rate": None,
        "retry_after_until": None,
        "retry_after_s": 0.0,
        "breaker": "closed",
        "probe_at": None,
        "probe_in_s": None,
        "opened_at": None,
        "throttled_share": None,
        "calls_total": 0,
        "throttled_total": 0,
        "governed": False,
    }

    throttle_and_break(conn)
    conn.execute("update intake.engine_config set webhook_rate_per_sec = 40 where pool_id = 'free'")
    pools = {p["pool_id"]: p["webhook"] for p in lifecycle.status(settings)["pools"]}
    paid, down, free = pools["paid"], pools["down"], pools["free"]
    # The first 429 teaches no rate yet: a ramp from a quarter of what the provider
    # answered, once the pause is over.
    assert paid["learned_rate"] is None
    assert paid["governed_rate"] == pytest.approx(75, rel=0.05)
    assert paid["retry_after_until"] is not None and 25 < paid["retry_after_s"] <= 30
    assert paid["throttled_share"] == 0.25
    assert (paid["calls_total"], paid["throttled_total"]) == (320, 20)
    assert (paid["breaker"], paid["governed"]) == ("closed", True)
    assert (down["breaker"], down["governed_rate"], down["governed"]) == ("open", 0, True)
    assert down["probe_at"] is not None and down["opened_at"] is not None
    assert 0 < down["probe_in_s"] <= 2
    assert (free["configured_rate"], free["governed_rate"], free["governed"]) == (40, 40, True)


def test_watch_draws_the_governors_and_the_countdown_runs_on_db1s_clock(event):
    _, conn = event
    throttle_and_break(conn)
    snap = watch.read(conn, fresh=True)
    assert set(snap.webhooks) == {"paid", "down", "free"}
    buffer = io.StringIO()
    watch.print_once(snap, Console(file=buffer, width=80))
    lines = buffer.getvalue().splitlines()
    [paid] = [line for line in lines if line.startswith("webhook paid")]
    shown_rate = int(paid.removeprefix("webhook paid: ").split("/s")[0])
    assert 70 <= shown_rate <= 80 and "429s 25.0%" in paid
    assert "Retry-After 30 s" in paid or "Retry-After 29 s" in paid
    assert "webhook down: 0/s  429s —  breaker OPEN, probe in 2 s" in lines
    assert "webhook free: no limit  429s —  breaker closed" in lines

    first = telemetry.webhook_governors(conn)["paid"].retry_after_s
    conn.execute("select pg_sleep(0.3)")
    later = telemetry.webhook_governors(conn)["paid"].retry_after_s
    assert first - later == pytest.approx(0.3, abs=0.15)


def _velocity(dsn: str, queue: str, pool: str, users: list[str]) -> float | None:
    async def read() -> float | None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return (await claim_views.read(conn, queue, pool, users)).velocity

    return asyncio.run(read())


def test_the_gateways_outflow_is_held_to_the_governed_rate(event, db1_dsn):
    settings, conn = event
    users = [f"buyer-{n}" for n in range(3)]
    for user in users:
        assert conn.execute("select (intake.claim_resource('paid', %s)).outcome", (user,))
    conn.execute("select intake.collect_metrics()")
    conn.execute("update intake.engine_metrics set processing_velocity = 100")

    def velocity() -> float | None:
        return _velocity(db1_dsn, settings.queue_name, "paid", users)

    assert velocity() == 100  # nothing governs the webhook: the measure stands
    conn.execute("update intake.engine_config set webhook_rate_per_sec = 500")
    assert velocity() == 100  # a ceiling above the measure changes nothing
    conn.execute("update intake.engine_config set webhook_rate_per_sec = 20")
    assert velocity() == 20  # no intent leaves faster than its webhook call
    report(conn, "paid", failed=200)
    assert velocity() == 0  # the breaker is open: no outflow for now
    report(conn, "paid", ok=1)
    # Closed again, the flow ramps up from a few calls a second.
    assert 0 < velocity() < 20
