"""`intake drain`: the worker that validates and commits the queued intents."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from intake_cli.engine.drain import worker as drainer
from intake_cli.engine.drain.context import DrainStats
from intake_cli.engine.drain.phases import PhaseClock
from intake_cli.faces.cli.root import (
    JsonOption,
    app,
    finite,
    given_config_path,
    load_settings,
    print_json,
    reporting_errors,
)
from intake_cli.platform import config, eventloop, logs
from intake_cli.platform.db import endpoints
from intake_cli.platform.errors import UsageError
from intake_cli.platform.processes import run_processes

# `drain --once` is run by cron and the like: waiting longer for a database
# than a run's period would pile runs up.
ONCE_CONNECT_TIMEOUT_S = 30
# One machine's worth: each process wants a core.
MAX_WORKERS = 128


@app.command()
def drain(
    concurrency: int = typer.Option(
        4,
        "--concurrency",
        min=1,
        max=64,
        help="Batches in flight at once: one batch's webhook calls overlap another's commits.",
    ),
    once: bool = typer.Option(
        False, "--once", help="Process one batch and exit (for cron or serverless callers)."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=MAX_WORKERS,
        help=(
            "Worker processes this command starts on this machine (one core each), "
            "each with --concurrency batches in flight; SIGINT/SIGTERM stops them all."
        ),
    ),
    pool: str | None = typer.Option(None, "--pool", help="Serve only this pool."),
    log_level: str = typer.Option(
        "info",
        "--log-level",
        help="debug | info | warning | error (info: one line per transition).",
    ),
    log_format: str = typer.Option("json", "--log-format", help="json | text"),
    webhook_timeout: float = typer.Option(
        10.0,
        "--webhook-timeout",
        min=0.1,
        max=3600,
        callback=finite,
        help="Seconds before a webhook call counts as failed.",
    ),
    shutdown_timeout: float = typer.Option(
        30.0,
        "--shutdown-timeout",
        min=0,
        max=3600,
        callback=finite,
        help="On SIGINT/SIGTERM, seconds in-flight batches get to finish before being handed back.",
    ),
    connect_timeout: float | None = typer.Option(
        None,
        "--connect-timeout",
        min=0,
        max=86400,
        callback=finite,
        help=(
            "Seconds to wait at start for DB1 and DB2 to be reachable, then exit 3 "
            f"(default: as long as it takes; with --once, {ONCE_CONNECT_TIMEOUT_S} s)."
        ),
        show_default=False,
    ),
    as_json: bool = JsonOption,
) -> None:
    """Drain intents: validate with the webhook, commit to DB2, archive. Runs until stopped.

    Started while DB1 or DB2 is unreachable, the worker waits for them (backoff
    with jitter, a waiting_for_db1/waiting_for_db2 log line per try) and drains
    as soon as both answer; --once gives up after --connect-timeout, so cron
    runs do not pile up. A configuration error (DB1 not provisioned, unknown
    pool, commit RPC missing in DB2) exits at once.

    SIGINT/SIGTERM stop reading (or waiting); in-flight batches finish (or are
    handed back to the queue after --shutdown-timeout) and the worker exits 0.
    Changes to engine_config (batch size, visibility timeout, webhook URL,
    commit rate, pause) are picked up at the next batch.

    --workers N starts N such workers as processes and stops them together;
    it exits with the first failing worker's status, and --json adds up
    their counts.
    """
    if log_level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    if log_format not in ("json", "text"):
        raise UsageError(f"--log-format: expected json or text, got {log_format!r}")
    settings = load_settings()
    if pool is not None and (reason := config.check_pool_id(pool)):
        raise UsageError(f"--pool: {reason}")
    if connect_timeout is None and once:
        connect_timeout = ONCE_CONNECT_TIMEOUT_S
    run = DrainRun(
        config_path=given_config_path(),
        concurrency=concurrency,
        once=once,
        pool=pool,
        log_level=log_level,
        log_format=log_format,
        webhook_timeout=webhook_timeout,
        shutdown_timeout=shutdown_timeout,
        connect_timeout=connect_timeout,
    )
    if workers == 1:
        stats = run_worker(run, settings).as_json()
    else:
        endpoints(settings)  # a configuration without DB1 or DB2 is refused once, not N times
        stats = _run_fleet(run, workers)
    if as_json:
        print_json(stats)


@dataclass(frozen=True)
class DrainRun:
    """One worker's settings, as `--workers` hands them to each process it starts."""

    config_path: str
    concurrency: int
    once: bool
    pool: str | None
    log_level: str
    log_format: str
    webhook_timeout: float
    shutdown_timeout: float
    connect_timeout: float | None


def run_worker(run: DrainRun, settings: config.Settings | None = None) -> DrainStats:
    """One `intake drain` worker in this process, until it stops."""
    settings = settings or config.load(run.config_path)
    where = endpoints(settings)
    log_drain = None
    if settings.log_drain_url:
        log_drain = logs.LogDrain(
            settings.log_drain_url, logs.DrainBuffer(settings.log_drain_buffer)
        )
    logger = logs.configure(run.log_level, run.log_format, log_drain.buffer if log_drain else None)
    worker = drainer.Worker(
        settings,
        where.db1,
        where.db2,
        logger,
        concurrency=run.concurrency,
        once=run.once,
        pool_filter=run.pool,
        webhook_timeout_s=run.webhook_timeout,
        shutdown_timeout_s=run.shutdown_timeout,
        log_drain=log_drain,
        connect_timeout_s=run.connect_timeout,
        phases=PhaseClock.from_environment(),
    )
    return eventloop.run(worker.run())


def _run_fleet(run: DrainRun, workers: int) -> dict[str, Any]:
    """`workers` processes of `run_worker`; their counts added up."""
    # Each process leaves its counts in a file of its own: a pipe the parent
    # reads only after joining could fill and hold a process back from exiting.
    with tempfile.TemporaryDirectory(prefix="intake-drain-") as reports:
        code = run_processes(_fleet_member, (run, reports), workers)
        if code:
            raise typer.Exit(code)
        # A process stopped before its worker started has nothing to add.
        counts = [json.loads(path.read_text()) for path in Path(reports).glob("*.json")]
    return {**DrainStats.total(counts), "workers": workers}


def _fleet_member(run: DrainRun, reports: str) -> None:
    def work() -> None:
        stats = run_worker(run).as_json()
        (Path(reports) / f"{os.getpid()}.json").write_text(json.dumps(stats))

    reporting_errors(work)
