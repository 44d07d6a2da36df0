"""Engine metrics: how they are scheduled, collected and read.

The collector itself is SQL (sql/templates/db1/telemetry.sql.j2) so that
pg_cron can run it inside DB1 every 5 s. This module renders its schedule
for the pg_cron at hand, reports which schedule is in use, and reads the
figures `intake status` and `intake watch` show.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from intake_cli.platform.sqlfiles import queries, render

INTERVAL_S = 5
# Metrics older than this many intervals are flagged as stale.
STALE_AFTER_S = 3 * INTERVAL_S
# A worker that has not heartbeaten for this long is shown as silent.
SILENT_AFTER_S = 10.0
HEARTBEAT_S = 2.0
# Where pg_cron does not run intake's housekeeping, each drain worker runs it
# this often (intake.keep_tidy: its cost is a scan of each pool's units).
TIDY_S = 60.0

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def query(name: str) -> str:
    return queries("telemetry")[name]


async def register_worker(
    conn: psycopg.AsyncConnection, worker_id: str, pool_filter: str | None, concurrency: int
) -> None:
    """Enter a drain (worker or serve's ticker) in the registry `intake watch` reads."""
    # An earlier try's insert may have committed before its connection broke.
    with contextlib.suppress(psycopg.errors.UniqueViolation):
        await conn.execute(
            query("register_worker"),
            {
                "worker_id": worker_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "pool_filter": pool_filter,
                "concurrency": concurrency,
            },
        )


async def keep_tidy_unless_scheduled(conn: psycopg.AsyncConnection) -> bool:
    """intake.keep_tidy, unless pg_cron's intake-maintenance runs it; True when it ran here.

    Old metric rows and stopped workers go, and units skipped by aborted
    claims come back on sale, with or without pg_cron. Lost inventories are
    not rebuilt here: the worker's own batches do that.
    """
    if await (await conn.execute(queries("db1")["pg_cron_version"])).fetchone():
        try:
            cur = conn.cursor(row_factory=dict_row)
            jobs = await (await cur.execute(query("cron_jobs"))).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            jobs = []  # cannot tell: tidying twice changes nothing
        if any(job["jobname"] == "intake-maintenance" and job["active"] for job in jobs):
            return False
    return bool(await (await conn.execute(query("tidy"))).fetchall())


def has_seconds_schedule(pg_cron_version: str) -> bool:
    """pg_cron 1.5 added schedules in seconds ('5 seconds')."""
    match = _VERSION.match(pg_cron_version)
    if match is None:
        raise ValueError(f"pg_cron version not understood: {pg_cron_version!r}")
    return (int(match.group(1)), int(match.group(2))) >= (1, 5)


def cron_sql(pg_cron_version: str) -> str:
    return render("db1/cron.sql.j2", seconds_schedule=has_seconds_schedule(pg_cron_version))


def install_minute_loop(conn: psycopg.Connection) -> None:
    """The minute-loop collector only where the pg_cron at hand may need it."""
    version = pg_cron_version(conn)
    if version is not None and has_seconds_schedule(version):
        conn.execute(query("drop_minute_loop"))
    else:
        conn.execute(render("db1/minute_loop.sql"))


def schedule(conn: psycopg.Connection) -> None:
    """(Re)schedule the metrics and housekeeping jobs where pg_cron is installed."""
    version = pg_cron_version(conn)
    if version is not None:
        conn.execute(cron_sql(version))


def unschedule(conn: psycopg.Connection) -> None:
    if pg_cron_version(conn) is None:
        return
    for job in cron_jobs(conn):
        conn.execute(query("unschedule"), {"jobname": job["jobname"]})


def pg_cron_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(queries("db1")["pg_cron_version"]).fetchone()
    return str(row[0]) if row else None


def cron_jobs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("cron_jobs")).fetchall()


@dataclass(frozen=True)
class ScheduleMode:
    mode: str  # seconds | minute-loop | none
    pg_cron: str | None
    description: str

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "pg_cron": self.pg_cron, "description": self.description}


def schedule_mode(conn: psycopg.Connection) -> ScheduleMode:
    version = pg_cron_version(conn)
    jobs = {job["jobname"]: job for job in cron_jobs(conn)} if version else {}
    job = jobs.get("intake-metrics")
    if version is None or job is None or not job["active"]:
        return ScheduleMode(
            "none",
            version,
            "not scheduled (pg_cron not in DB1): `intake watch` collects while it runs",
        )
    if job["schedule"].strip().endswith("seconds"):
        return ScheduleMode("seconds", version, f"pg_cron {version}: every {job['schedule']}")
    return ScheduleMode(
        "minute-loop",
        version,
        f"pg_cron {version} (minute schedules only): a minute job collecting every {INTERVAL_S} s",
    )


def collect(conn: psycopg.Connection) -> int:
    return int(conn.execute(query("collect")).fetchone()[0])  # type: ignore[index]


def pool_metrics(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Each pool's figures computed now (what a collection would write)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("pool_metrics")).fetchall()


def latest(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Each pool's newest engine_metrics row, with `age_s`."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("latest")).fetchall()


def newest_age_s(rows: list[dict[str, Any]]) -> float | None:
    """How old the newest of `latest`'s rows is; None when nothing was collected."""
    return min((float(row["age_s"]) for row in rows), default=None)


def newest(conn: psycopg.Connection) -> tuple[datetime | None, float | None]:
    """When the newest metrics row of any pool was written, and its age in seconds.

    The dashboard asks this four times a second to notice a new collection;
    it is one probe of the collected_at index, however long the history.
    """
    row = conn.execute(query("newest")).fetchone()
    if row is None or row[0] is None:
        return None, None
    return row[0], float(row[1])


def velocity_history(conn: psycopg.Connection, seconds: int) -> list[float]:
    """Commits per second across pools, one figure per collection, oldest first."""
    rows = conn.execute(query("velocity_history"), {"seconds": seconds}).fetchall()
    return [float(row[1]) for row in rows]


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    hostname: str
    pid: int
    pool_filter: str | None
    concurrency: int
    batches: int
    committed: int
    rejected: int
    retried: int
    dead_lettered: int
    log_lines_dropped: int
    heartbeat_age_s: float
    stopped: bool

    @property
    def state(self) -> str:
        if self.stopped:
            return "stopped"
        return "silent" if self.heartbeat_age_s > SILENT_AFTER_S else "alive"

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "state": self.state}


def workers(conn: psycopg.Connection) -> list[WorkerView]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("workers")).fetchall()
    return [
        WorkerView(
            **{k: v for k, v in row.items() if k not in ("started_at", "heartbeat_age_s")},
            heartbeat_age_s=float(row["heartbeat_age_s"]),
        )
        for row in rows
    ]


def history(conn: psycopg.Connection, pool_id: str, seconds: int) -> list[dict[str, Any]]:
    """One pool's metrics rows over the last `seconds`, oldest first (charts, the admin API)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("history"), {"pool_id": pool_id, "seconds": seconds}).fetchall()


@dataclass(frozen=True)
class WebhookGovernor:
    """One pool's webhook governor as DB1 holds it now (sql/templates/db1/governor.sql).

    Read live, not from engine_metrics: a Retry-After or an open breaker
    lasts seconds, less than a collection's interval. Pools that share a
    webhook URL share one governor, so they show the same figures.
    """

    pool_id: str
    # webhook_rate_per_sec; 0: no ceiling but what the provider asks for.
    configured_rate: int
    # Calls per second in force now; None: no limit; 0 while the breaker is open.
    governed_rate: float | None
    # Found from the provider's 429s; None until the first.
    learned_rate: float | None
    retry_after_until: datetime | None
    retry_after_s: float
    breaker: str  # closed | open
    probe_at: datetime | None
    probe_in_s: float | None
    opened_at: datetime | None
    # 429s over all calls in the last full second; None when there were none.
    throttled_share: float | None
    calls_total: int
    throttled_total: int

    @property
    def governed(self) -> bool:
        """Anything holding the calls back: a rate in force, a Retry-After, an open breaker."""
        return (
            self.governed_rate is not None
            or self.retry_after_until is not None
            or self.breaker == "open"
        )

    def as_json(self) -> dict[str, Any]:
        def stamp(at: datetime | None) -> str | None:
            return at.isoformat() if at is not None else None

        def rounded(value: float | None, digits: int) -> float | None:
            return round(value, digits) if value is not None else None

        return {
            "configured_rate": self.configured_rate,
            "governed_rate": rounded(self.governed_rate, 2),
            "learned_rate": rounded(self.learned_rate, 2),
            "retry_after_until": stamp(self.retry_after_until),
            "retry_after_s": round(self.retry_after_s, 1),
            "breaker": self.breaker,
            "probe_at": stamp(self.probe_at),
            "probe_in_s": rounded(self.probe_in_s, 1),
            "opened_at": stamp(self.opened_at),
            "throttled_share": rounded(self.throttled_share, 4),
            "calls_total": self.calls_total,
            "throttled_total": self.throttled_total,
            "governed": self.governed,
        }


def webhook_governors(conn: psycopg.Connection) -> dict[str, WebhookGovernor]:
    """Every pool's webhook governor, by pool id (one small read: a row per pool)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("webhook_governors")).fetchall()
    return {row["pool_id"]: WebhookGovernor(**row) for row in rows}
