"""`POST /api/drain/tick[?pool=P]`: one drain batch per call, for schedulers that speak HTTP.

pg_net is fire and forget: `cron.job_run_details` says `succeeded` even
when its call never reached serve. Only serve sees the ticks arrive, so it
keeps the time of the last one and says when they stop (`TickWatch`):
/api/status, /metrics and the dashboard show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from intake_cli.engine import telemetry
from intake_cli.engine.drain.tick import Ticker
from intake_cli.faces.serve.replies import ApiError, from_intake, ok
from intake_cli.faces.serve.state import ENDPOINTS, LOGGER, SETTINGS
from intake_cli.platform import config
from intake_cli.platform.db import connect
from intake_cli.platform.errors import IntakeError

TICKER = web.AppKey("ticker", Ticker)
# The pg_cron job `intake render --drain-tick` schedules.
TICK_JOB = "intake-drain-tick"
# How often the job's schedule is read again from DB1 (it rarely changes).
JOB_REREAD_S = 30.0
# Ticks count as stopped after this many of their intervals without one.
MISSED_INTERVALS = 3
MIN_STALE_AFTER_S = 30.0
_SECONDS_SCHEDULE = re.compile(r"^\s*(\d+)\s+seconds?\s*$")


@dataclass(frozen=True)
class TickExpectation:
    """What the operator said of ticks (`intake serve --expect-ticks`, `--tick-stale-after`).

    expected None: expected once DB1 schedules the tick job or a tick arrives.
    stale_after_s None: MISSED_INTERVALS of the job's interval (60 s when the
    job is not known), at least MIN_STALE_AFTER_S.
    """

    expected: bool | None = None
    stale_after_s: float | None = None


def schedule_interval_s(schedule: str) -> float:
    """Seconds between runs of a pg_cron schedule: `N seconds`, else a minute schedule."""
    found = _SECONDS_SCHEDULE.match(schedule)
    return float(found.group(1)) if found else 60.0


class TickWatch:
    """When the last tick arrived, whether ticks are expected, and whether they stopped."""

    def __init__(self, expectation: TickExpectation) -> None:
        self.expectation = expectation
        self.started_at = time.time()
        self.last_at: float | None = None
        self.last_outcome: str | None = None
        self.arrived_count = 0
        self.job: dict[str, Any] | None = None
        self._job_read_at: float | None = None

    def arrived(self) -> None:
        self.last_at = time.time()
        self.arrived_count += 1

    def finished(self, outcome: str) -> None:
        self.last_outcome = outcome

    def job_due(self) -> bool:
        """Whether DB1's schedule is to be read again (read at most every JOB_REREAD_S)."""
        read_at = self._job_read_at
        return read_at is None or time.monotonic() - read_at >= JOB_REREAD_S

    def read_job(self, conn: psycopg.Connection) -> None:
        """Refresh what DB1 schedules when due (a thread's call)."""
        if not self.job_due():
            return
        now = time.monotonic()
        jobs = telemetry.cron_jobs(conn) if telemetry.pg_cron_version(conn) else []
        self.job = next((job for job in jobs if job["jobname"] == TICK_JOB), None)
        self._job_read_at = now

    def _expected(self) -> tuple[bool, str]:
        if self.expectation.expected is not None:
            said = "--expect-ticks" if self.expectation.expected else "--no-expect-ticks"
            return self.expectation.expected, f"serve was started with {said}"
        if self.job is not None and self.job.get("active"):
            return True, f"DB1's pg_cron job {TICK_JOB} is active ({self.job['schedule']})"
        if self.arrived_count:
            return True, "ticks have arrived since serve started"
        return False, f"no pg_cron job {TICK_JOB} in DB1 and no tick since serve started"

    def stale_after_s(self) -> float:
        if self.expectation.stale_after_s is not None:
            return self.expectation.stale_after_s
        interval = schedule_interval_s(str(self.job["schedule"])) if self.job else 60.0
        return max(MIN_STALE_AFTER_S, MISSED_INTERVALS * interval)

    def state(self, now: float | None = None) -> dict[str, Any]:
        """The figures /api/status, /metrics and the dashboard show."""
        now = time.time() if now is None else now
        expected, why = self._expected()
        stale_after = self.stale_after_s()
        # Never a tick: silent since serve started.
        silent_for = now - (self.last_at if self.last_at is not None else self.started_at)
        return {
            "expected": expected,
            "expected_because": why,
            "last_at": _iso(self.last_at),
            "age_s": None if self.last_at is None else round(now - self.last_at, 1),
            "last_outcome": self.last_outcome,
            "arrived": self.arrived_count,
            "stale_after_s": stale_after,
            "stale": expected and silent_for > stale_after,
            "since": _iso(self.last_at if self.last_at is not None else self.started_at),
        }


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()


EXPECTATION = web.AppKey("tick_expectation", TickExpectation)
WATCH = web.AppKey("tick_watch", TickWatch)


async def current_state(app: web.Application) -> dict[str, Any]:
    """The tick figures, with DB1's schedule re-read when due (DB1 away: the last one read)."""
    watch = app[WATCH]

    def refresh() -> None:
        with connect(app[ENDPOINTS].db1, "DB1") as conn:
            watch.read_job(conn)

    # No connection (and no thread) while the schedule read last is fresh.
    if watch.job_due():
        with contextlib.suppress(psycopg.Error, IntakeError):
            await asyncio.to_thread(refresh)
    return watch.state()


async def post_tick(request: web.Request) -> web.Response:
    watch = request.app[WATCH]
    watch.arrived()
    try:
        answer = await _run_tick(request)
    except BaseException:
        watch.finished("failed")
        raise
    watch.finished("ok")
    return answer


async def _run_tick(request: web.Request) -> web.Response:
    pool_id = request.query.get("pool")
    if pool_id is not None and (reason := config.check_pool_id(pool_id)):
        raise ApiError(422, f"pool id: {reason}", "pool")
    try:
        counts = await request.app[TICKER].tick(pool_id)
    except IntakeError as exc:
        raise from_intake(exc, "pool") from None
    except (psycopg.Error, PoolTimeout) as exc:
        # DB1 unreachable or its pool exhausted: nothing was taken, the next tick tries again.
        request.app[LOGGER].warning("tick failed: %s", exc)
        raise ApiError(503, f"tick failed, nothing taken: {str(exc)[:200]}") from None
    return ok(counts)


async def _open(app: web.Application) -> None:
    where = app[ENDPOINTS]
    ticker = Ticker(app[SETTINGS], where.db1, where.db2, app[LOGGER])
    await ticker.open()
    app[TICKER] = ticker


async def _close(app: web.Application) -> None:
    if TICKER in app:
        await app[TICKER].close()


def install(app: web.Application) -> None:
    app[WATCH] = TickWatch(app[EXPECTATION])
    app.router.add_post("/api/drain/tick", post_tick)
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
