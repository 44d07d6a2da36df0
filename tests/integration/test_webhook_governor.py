"""The webhook governor in DB1: one bucket, one learned rate, one Retry-After and
one breaker per payment provider, shared by every worker of the fleet."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.conftest import pool_spec
from tests.integration.test_claims import provision

TAKE = "select * from intake.take_webhook_calls(%s, %s)"
REPORT = "select * from intake.report_webhook_calls(%s, %s, %s, %s, %s)"


def _take(conn: psycopg.Connection, wanted: int, pool: str = "pay") -> tuple[int, float, bool]:
    return conn.execute(TAKE, (pool, wanted)).fetchone()


def _report(
    conn: psycopg.Connection, ok: int, throttled: int, failed: int, retry_after: float | None
) -> tuple:
    return conn.execute(REPORT, ("pay", ok, throttled, failed, retry_after)).fetchone()


def _state(conn: psycopg.Connection, pool: str = "pay") -> dict:
    cur = conn.execute("select * from intake.webhook_governor_state() where pool_id = %s", (pool,))
    names = [c.name for c in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


def _granted_over(conn: psycopg.Connection, seconds: float, wanted: int = 50) -> int:
    total, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        granted, wait_s, _ = _take(conn, wanted)
        total += granted
        if not granted:
            time.sleep(min(wait_s, 0.05))
    return total


@pytest.fixture
def db1(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("pay", 10), pool_spec("free", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        yield conn


def test_no_limit_grants_every_call_and_a_set_rate_meters_the_fleet(db1):
    assert _take(db1, 500, "free") == (500, 0, False)
    db1.execute("update intake.engine_config set webhook_rate_per_sec = 200 where pool_id = 'pay'")
    granted = _granted_over(db1, 1.0)
    # A fifth of a second of burst at most on top of the rate.
    assert 150 <= granted <= 240
    assert _state(db1)["governed_rate"] == 200


def test_retry_after_pauses_every_caller_and_a_429_teaches_a_rate(db1):
    _report(db1, 300, 0, 0, None)
    breaker, changed, learned, paused, _ = _report(db1, 0, 20, 0, 1.5)
    assert (breaker, changed) == ("closed", False)
    # 95 % of the calls the provider answered over the last second.
    assert learned == pytest.approx(285, rel=0.05)
    assert paused is not None
    granted, wait_s, _ = _take(db1, 10)
    assert granted == 0 and 1.0 < wait_s <= 1.5
    state = _state(db1)
    assert state["retry_after_until"] is not None
    assert state["governed_rate"] == pytest.approx(285, rel=0.05)
    time.sleep(wait_s + 0.05)
    # After the pause, calls flow at the learned rate.
    assert 200 <= _granted_over(db1, 1.0) <= 350


def test_a_429_without_retry_after_only_slows_the_fleet_and_one_decrease_a_second(db1):
    _report(db1, 400, 0, 0, None)
    first = _report(db1, 0, 50, 0, None)[2]
    second = _report(db1, 0, 50, 0, None)[2]
    assert first == pytest.approx(380, rel=0.05)
    assert second == first  # the same wave of 429s: no second decrease
    assert _take(db1, 10)[1] < 1  # no pause


def test_the_breaker_opens_after_failures_probes_and_ramps_up_after_an_answer(db1):
    assert _report(db1, 0, 0, 40, None)[:2] == ("closed", False)
    # Not one batch's failures: two seconds of them with no answer between.
    db1.execute(
        "update intake.webhook_governors set failing_since = failing_since - '2 s'::interval"
    )
    assert _report(db1, 0, 0, 1, None)[:2] == ("open", True)
    state = _state(db1)
    assert state["breaker"] == "open" and state["governed_rate"] == 0
    granted, wait_s, probe = _take(db1, 10)
    assert granted == 0 and 1.5 < wait_s <= 2.0 and not probe
    db1.execute("update intake.webhook_governors set probe_at = clock_timestamp()")
    assert _take(db1, 10) == (1, 0, True)  # one probe, and only one
    assert _take(db1, 10)[0] == 0
    # A failed probe keeps it open; an answered one closes it.
    assert _report(db1, 0, 0, 1, None)[:2] == ("open", False)
    assert _report(db1, 1, 0, 0, None)[:2] == ("closed", True)
    # The flow ramps up from a few calls a second, not all at once.
    assert _state(db1)["governed_rate"] < 10
    assert _granted_over(db1, 0.5) < 20
    time.sleep(1.5)
    assert _state(db1)["governed_rate"] > 20


def test_an_answer_between_failures_keeps_the_breaker_closed(db1):
    for _ in range(10):
        _report(db1, 0, 0, 30, None)
        db1.execute(
            "update intake.webhook_governors set failing_since = failing_since - '5 s'::interval"
        )
        assert _report(db1, 1, 0, 0, None)[0] == "closed"
    assert _report(db1, 0, 0, 30, None)[0] == "closed"
