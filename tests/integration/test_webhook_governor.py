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


def _seconds_until(conn: psycopg.Connection, instant: object) -> float:
    """Seconds from DB1's clock now to `instant` (a timestamptz it returned)."""
    (left,) = conn.execute(
        "select extract(epoch from %s::timestamptz - clock_timestamp())::float8", (instant,)
    ).fetchone()
    return left


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


def _learned(conn: psycopg.Connection, rate: float, ago_s: float, hold_s: float = 30) -> None:
    """A rate learned `ago_s` seconds ago, holding `hold_s`; windows emptied."""
    conn.execute(
        "update intake.webhook_governors set learned_rate = %s,"
        " learned_at = clock_timestamp() - make_interval(secs => %s), learned_hold_s = %s,"
        " ramp_started_at = null, ok_prev = 0, ok_now = 0, tokens = 0",
        (rate, ago_s, hold_s),
    )


def _windows(conn: psycopg.Connection, ok_prev: int, ok_now: int, into_s: float) -> None:
    """The answers reported: `ok_prev` in the last full second, `ok_now` in the
    `into_s` seconds of the current one; no 429 or failure in them."""
    conn.execute(
        "update intake.webhook_governors set ok_prev = %s, ok_now = %s,"
        " throttled_prev = 0, throttled_now = 0, failed_prev = 0, failed_now = 0,"
        " window_start = clock_timestamp() - make_interval(secs => %s)",
        (ok_prev, ok_now, into_s),
    )


def _busy(conn: psycopg.Connection, per_s: int) -> None:
    """The fleet has called `per_s` a second over the windows: a rate it uses."""
    _windows(conn, per_s, per_s // 2, into_s=0.5)


def _paused(conn: psycopg.Connection, began_s_ago: float, ended_s_ago: float) -> None:
    """A Retry-After pause that began and ended so many seconds ago."""
    conn.execute(
        "update intake.webhook_governors"
        " set paused_at = clock_timestamp() - make_interval(secs => %s),"
        " paused_until = clock_timestamp() - make_interval(secs => %s)",
        (began_s_ago, ended_s_ago),
    )


def test_no_limit_grants_every_call_and_a_set_rate_meters_the_fleet(db1):
    assert _take(db1, 500, "free") == (500, 0, False)
    db1.execute("update intake.engine_config set webhook_rate_per_sec = 200 where pool_id = 'pay'")
    granted = _granted_over(db1, 1.0)
    # A fiftieth of a second of burst at most on top of the rate: a provider
    # counting fixed one-second windows sees at most the rate and 2 %.
    assert 150 <= granted <= 210
    assert _state(db1)["governed_rate"] == 200


def test_retry_after_pauses_every_caller_and_the_first_429_starts_a_ramp(db1):
    _report(db1, 300, 0, 0, None)
    breaker, changed, learned, paused, _ = _report(db1, 0, 20, 0, 1.5)
    assert (breaker, changed) == ("closed", False)
    # Nothing learned from one 429: a ramp from a quarter of the answers
    # reported (a first guess may read twice the limit).
    assert learned is None
    # The pause runs the Retry-After from now.
    assert 0.5 < _seconds_until(db1, paused) <= 1.5
    granted, wait_s, _ = _take(db1, 10)
    assert granted == 0 and 1.0 < wait_s <= 1.5
    state = _state(db1)
    assert state["retry_after_until"] is not None
    # The ramp starts when the pause ends: ~75 a second, doubling each second.
    assert state["governed_rate"] == pytest.approx(75, rel=0.1)
    time.sleep(wait_s + 0.05)
    assert 75 <= _granted_over(db1, 1.0) <= 130
    _busy(db1, 100)  # what the fleet reports it called: the ramp may double past it
    assert _state(db1)["governed_rate"] > 140


def test_the_first_429_without_retry_after_ramps_up_at_once(db1):
    """No Retry-After: the ramp starts now, not an hour from now (a null in
    SQL's least() once read as its other argument, 3600 s)."""
    _report(db1, 0, 50, 0, None)
    db1.execute(
        "update intake.webhook_governors set ramp_started_at = ramp_started_at - '2 s'::interval"
    )
    # 20 a second at least (nothing was reported), four times that 2 s on.
    assert _state(db1)["governed_rate"] == pytest.approx(80, rel=0.1)
    assert _take(db1, 10)[1] < 1  # no pause


def test_a_later_429_learns_what_the_provider_accepted_and_one_decrease_a_second(db1):
    _report(db1, 0, 1, 0, None)  # the first 429: the row exists, a ramp runs
    _learned(db1, 250, ago_s=5)
    _windows(db1, 190, 95, into_s=0.5)
    learned = _report(db1, 0, 10, 0, None)[2]
    # A steady rate, refused 5 s after it was learned: 97 % of 285 answers
    # over 1.5 s.
    assert learned == pytest.approx(0.97 * 285 / 1.5, rel=0.03)
    # The same wave of 429s: no second decrease.
    assert _report(db1, 0, 10, 0, None)[2] == learned
    # No Retry-After: it holds 3 s, then rises, while the fleet uses it.
    assert _state(db1)["governed_rate"] == pytest.approx(learned, rel=0.01)
    db1.execute("update intake.webhook_governors set learned_at = learned_at - '13 s'::interval")
    _busy(db1, 300)
    assert _state(db1)["governed_rate"] == pytest.approx(learned * 1.3, rel=0.05)


def test_a_learned_rate_never_falls_below_half_nor_stays_above_97_percent(db1):
    _report(db1, 0, 1, 0, None)
    # Idle workers left the windows empty: half the rate refused, not 1.
    _learned(db1, 200, ago_s=5)
    _windows(db1, 0, 0, into_s=0.5)
    assert _report(db1, 0, 10, 0, None)[2] == pytest.approx(100, rel=0.01)
    # The windows read the very rate refused: it just crossed the limit.
    _learned(db1, 200, ago_s=5)
    _windows(db1, 300, 150, into_s=0.5)
    assert _report(db1, 0, 10, 0, None)[2] == pytest.approx(194, rel=0.01)


def test_a_429_soon_after_a_pause_reads_only_the_time_outside_it_and_holds_nothing(db1):
    _report(db1, 0, 1, 0, None)
    _learned(db1, 250, ago_s=40)  # held 30 s, then the cube; the fleet used 133/s
    _windows(db1, 100, 100, into_s=0.5)
    # 0.3 s of the 1.5 s were paused: 200 answers over 1.2 s. Calls restarted
    # 0.9 s ago, so the windows read no steady rate: 95 % of the reading, no
    # more than 70 % of the rate refused, and no hold.
    _paused(db1, began_s_ago=1.2, ended_s_ago=0.9)
    learned, paused = _report(db1, 0, 10, 0, 1)[2:4]
    assert learned == pytest.approx(0.95 * 200 / 1.2, rel=0.03)
    assert 0 < _seconds_until(db1, paused) <= 1.0
    db1.execute("update intake.webhook_governors set learned_at = learned_at - '10 s'::interval")
    _busy(db1, 300)
    assert _state(db1)["governed_rate"] == pytest.approx(learned * 1.3, rel=0.05)
    # Under a second left outside the pause: the windows cannot tell (a
    # window's edge lets twice the limit through), 70 % of the rate
    # refused when it came from a ramp or the cube (held for no time)...
    _learned(db1, 200, ago_s=5, hold_s=0)
    _windows(db1, 100, 100, into_s=0.5)
    _paused(db1, began_s_ago=1.4, ended_s_ago=0.3)
    assert _report(db1, 0, 10, 0, 1)[2] == pytest.approx(140, rel=0.01)
    # ... but 3 % down from a rate read steady and still in its hold: calls
    # held back by the pause met a window's edge.
    _learned(db1, 200, ago_s=5, hold_s=60)
    _windows(db1, 100, 100, into_s=0.5)
    _paused(db1, began_s_ago=1.4, ended_s_ago=0.3)
    assert _report(db1, 0, 10, 0, 1)[2] == pytest.approx(194, rel=0.01)
    assert _state(db1)["learned_rate"] == pytest.approx(194, rel=0.01)


def test_a_429_on_a_steady_rate_with_retry_after_learns_97_percent_and_holds_60_s(db1):
    _report(db1, 0, 1, 0, None)
    _learned(db1, 250, ago_s=38)  # the cube rose to 288, 6 % in the last 1.5 s
    _windows(db1, 250, 125, into_s=0.5)
    _paused(db1, began_s_ago=30, ended_s_ago=29)
    learned = _report(db1, 0, 10, 0, 1)[2]
    # The fleet called 257 a second (385 calls over 1.5 s), so the rate in
    # force, as the windows began and now, was 5 % above that, under the
    # cube; the provider accepted 250 a second, close to it: 97 % of the
    # rate in force as the windows began.
    assert learned == pytest.approx(0.97 * 1.05 * 385 / 1.5, rel=0.02)
    db1.execute("update intake.webhook_governors set learned_at = learned_at - '55 s'::interval")
    _busy(db1, 300)
    assert _state(db1)["governed_rate"] == pytest.approx(learned, rel=0.01)
    # Had it accepted well under the rate in force (160 of the 385 calls
    # refused), 97 % of what it accepted.
    _learned(db1, 250, ago_s=38)
    _windows(db1, 150, 75, into_s=0.5)
    db1.execute("update intake.webhook_governors set throttled_prev = 160")
    _paused(db1, began_s_ago=30, ended_s_ago=29)
    assert _report(db1, 0, 10, 0, 1)[2] == pytest.approx(0.97 * 150, rel=0.02)


def test_a_ramp_refused_reads_no_steady_rate_and_the_cube_climbs_at_once(db1):
    _report(db1, 0, 50, 0, None)  # the first 429: a ramp from 20 a second
    db1.execute(
        "update intake.webhook_governors set ramp_started_at = ramp_started_at - '3 s'::interval,"
        " learned_at = learned_at - '3 s'::interval"
    )
    _windows(db1, 100, 60, into_s=0.5)
    # The ramp doubled to 160 a second; 160 answers over 1.5 s read 107.
    learned = _report(db1, 0, 10, 0, None)[2]
    assert learned == pytest.approx(0.95 * 160 / 1.5, rel=0.03)
    assert _state(db1)["governed_rate"] == pytest.approx(learned, rel=0.01)
    db1.execute("update intake.webhook_governors set learned_at = learned_at - '10 s'::interval")
    _busy(db1, 200)
    assert _state(db1)["governed_rate"] == pytest.approx(learned * 1.3, rel=0.05)


def test_a_ramp_rises_only_as_far_as_the_fleet_uses_it(db1):
    """Workers short of CPU call less than a ramp allows, so no 429 comes to
    stop it: it may double to twice what the fleet calls, no further, or the
    429 that comes with the calls teaches half of a runaway rate."""
    _report(db1, 0, 50, 0, None)  # the first 429: a ramp from 20 a second
    db1.execute(
        "update intake.webhook_governors set ramp_started_at = ramp_started_at - '10 s'::interval,"
        " learned_at = learned_at - '10 s'::interval"
    )
    _busy(db1, 100)
    assert _state(db1)["governed_rate"] == pytest.approx(200, rel=0.02)
    _busy(db1, 20_000)  # calls keep up: the ramp is its own bound (20 x 2^10)
    assert _state(db1)["governed_rate"] == pytest.approx(20 * 2**10, rel=0.05)
    # Refused now, the rate learned is at least half of 200, not of 20,480.
    _busy(db1, 100)
    learned = _report(db1, 0, 10, 0, None)[2]
    assert learned < 200


def test_a_learned_rate_rises_only_as_far_as_the_fleet_uses_it(db1):
    """Workers short of CPU (or an empty queue) leave the rate unused: the cube
    may not grow it past 5 % above what the fleet calls, or the calls, when
    they come back, meet the provider all at once."""
    _report(db1, 0, 1, 0, None)
    _learned(db1, 100, ago_s=18, hold_s=3)  # the cube: doubled by now
    _windows(db1, 0, 0, into_s=0.5)
    assert _state(db1)["governed_rate"] == pytest.approx(100, rel=0.01)
    assert 80 <= _granted_over(db1, 1.0) <= 110
    _busy(db1, 120)
    assert _state(db1)["governed_rate"] == pytest.approx(1.05 * 120, rel=0.02)
    _learned(db1, 100, ago_s=18, hold_s=3)
    _busy(db1, 400)
    assert _state(db1)["governed_rate"] == pytest.approx(200, rel=0.05)
    # Nobody reported for 3 s: nothing used.
    db1.execute(
        "update intake.webhook_governors set window_start = clock_timestamp() - '3 s'::interval"
    )
    assert _state(db1)["governed_rate"] == pytest.approx(100, rel=0.01)


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


def _answering(conn: psycopg.Connection, ok: int, failed: int, asked_s_ago: float) -> bool:
    """Whether the governor charges these failures to their intents (else: an outage)."""
    (answering,) = conn.execute(
        "select answering from intake.report_webhook_calls(%s, %s, 0, %s, null, 0, %s)",
        ("pay", ok, failed, asked_s_ago),
    ).fetchone()
    return answering


def _run_of_failures(conn: psycopg.Connection, began_s_ago: float, last_s_ago: float) -> None:
    """Failures with no answer between them since `began_s_ago`, the last `last_s_ago`."""
    conn.execute(
        "update intake.webhook_governors"
        " set failing_since = clock_timestamp() - make_interval(secs => %s),"
        " last_failure_at = clock_timestamp() - make_interval(secs => %s),"
        " last_ok_at = null, failures_in_row = 1",
        (began_s_ago, last_s_ago),
    )


def test_failures_with_no_answer_since_the_last_are_an_outage_until_an_answer(db1):
    assert _answering(db1, 0, 20, 0.05)  # the first of a run: the intents' own
    assert not _answering(db1, 0, 20, 0.0)  # asked after it, nobody answered since
    assert _answering(db1, 1, 3, 0.0)  # an answer beside them
    assert _answering(db1, 0, 20, 0.0)  # answered since the last failure


def test_a_failure_in_flight_with_the_runs_first_is_judged_as_it_was(db1):
    # One wave of retries read by two batches at once: the first batch's
    # report began the run; the second's calls were made before it.
    _run_of_failures(db1, began_s_ago=0.2, last_s_ago=0.2)
    assert _answering(db1, 0, 10, asked_s_ago=0.5)
    # Calls made after the run began, with no answer since: an outage, and so
    # for calls in flight with any later report of the run.
    _run_of_failures(db1, began_s_ago=1.5, last_s_ago=0.2)
    assert not _answering(db1, 0, 10, asked_s_ago=0.5)
    assert not _answering(db1, 0, 10, asked_s_ago=1.0)
    # Failures 2 s after the last begin a new run, charged however long ago asked.
    _run_of_failures(db1, began_s_ago=5.0, last_s_ago=2.5)
    assert _answering(db1, 0, 10, asked_s_ago=0.0)


def test_failures_within_a_second_of_an_answer_are_the_intents_own(db1):
    # One wave of retries read by two batches, the second asked just after
    # the first reported: the provider answered somebody a moment before.
    assert _report(db1, 1, 0, 0, None)[0] == "closed"
    assert _answering(db1, 0, 5, asked_s_ago=0.0)  # the run begins
    assert _answering(db1, 0, 15, asked_s_ago=0.0)  # an answer within the second
    db1.execute(
        "update intake.webhook_governors"
        " set last_ok_at = clock_timestamp() - '1.5 s'::interval,"
        " failing_since = clock_timestamp() - '1 s'::interval"
    )
    assert not _answering(db1, 0, 15, asked_s_ago=0.0)  # nobody for a second: an outage
