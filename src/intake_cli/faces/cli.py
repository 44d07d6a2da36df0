"""The `intake` command: parse, call the module that owns the job, print."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from intake_cli import __version__
from intake_cli.engine import claims, controls, lifecycle, render
from intake_cli.engine import dlq as dead_letters
from intake_cli.engine import worker as drainer
from intake_cli.faces import serve, watch
from intake_cli.faces.serve import auth as serve_auth
from intake_cli.platform import config, eventloop, logs
from intake_cli.platform.db import connect, endpoints, first_line
from intake_cli.platform.display import cell, markup
from intake_cli.platform.errors import ConnectionFailed, IntakeError, UnknownPool, UsageError
from intake_cli.tools import demo, testhook
from intake_cli.tools.bench import dashboard as bench_dashboard
from intake_cli.tools.bench import drain as bench_drain
from intake_cli.tools.bench import e2e as bench_e2e
from intake_cli.tools.bench import gateway as bench_gateway
from intake_cli.tools.bench import metrics as bench_metrics
from intake_cli.tools.bench import recovery as bench_recovery
from intake_cli.tools.bench import seeding as bench_seeding
from intake_cli.tools.bench import tick as bench_tick
from intake_cli.tools.bench.claims import bench_app

app = typer.Typer(
    help=(
        "Burst-to-Queue intake engine: buyers claim units in an ephemeral Postgres (DB1), "
        "drain workers validate and commit each intent once into the core ledger (DB2)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Much of what is printed comes from outside (webhooks, DB2, files): it goes
# through intake_cli.platform.display, and no `:name:` in it is turned into an emoji.
out = Console(emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

_config_path = config.DEFAULT_CONFIG


@app.callback()
def _global_options(
    config_path: str = typer.Option(
        config.DEFAULT_CONFIG,
        "--config",
        "-c",
        envvar="INTAKE_CONFIG",
        help="Path to intake.yaml (env: INTAKE_CONFIG).",
    ),
) -> None:
    global _config_path
    _config_path = config_path


def _settings() -> config.Settings:
    return config.load(_config_path)


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def _finite(value: float | None) -> float | None:
    """A float option's check: nan passes every min/max (it compares false), inf passes min."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"expected a finite number, got {value}")
    return value


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@app.command()
def init(
    path: Path = typer.Argument(Path(config.DEFAULT_CONFIG), help="Where to write the file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a starter intake.yaml (the commented example) to PATH."""
    config.write_example(path, force=force)
    out.print(f"wrote {markup(path)}; edit it, then run: intake -c {markup(path)} up")


@app.command()
def up(as_json: bool = JsonOption) -> None:
    """Provision the event: DB1 schema, queues and inventory (idempotent).

    With no DSNs configured, local PostgreSQL clusters for DB1 and DB2 are
    started under the state directory. Running it again changes nothing;
    after editing intake.yaml it applies the difference.
    """
    settings = _settings()
    progress = Progress(
        TextColumn("seeding {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} units"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
    )
    tasks: dict[str, Any] = {}

    def on_seed(pool: config.PoolSettings, done: int, total: int) -> None:
        if pool.pool_id not in tasks:
            tasks[pool.pool_id] = progress.add_task(markup(pool.pool_id), total=total)
        progress.update(tasks[pool.pool_id], completed=done)

    with progress:
        report = lifecycle.up(settings, on_seed)
    s = report.schema
    if as_json:
        _print_json(
            {
                "embedded": report.endpoints.embedded,
                "schema_version": s.schema_version,
                "migrations_applied": list(s.migrations_applied),
                "pgmq": {
                    "source": s.pgmq.source,
                    "version": s.pgmq.version,
                    "installed_now": s.pgmq_installed_now,
                },
                "queues_created": list(s.queues_created),
                "pools": [
                    {"pool_id": c.pool_id, "action": c.action, "fields": list(c.fields)}
                    for c in report.pools
                ],
                "seeded": [
                    {
                        "pool_id": r.pool_id,
                        "added": r.added,
                        "total": r.total,
                        "seconds": round(r.seconds, 3),
                        "recovered": r.recovered.as_json() if r.recovered else None,
                    }
                    for r in report.seeds
                ],
                "recovered_units": report.recovered,
            }
        )
        return
    where = (
        "embedded clusters in " + markup(settings.state_dir)
        if report.endpoints.embedded
        else ("configured servers")
    )
    out.print(f"[bold]DB1/DB2[/]: {where}")
    pgmq_note = " (installed now)" if s.pgmq_installed_now else ""
    pgmq = markup(f"{s.pgmq.source} {s.pgmq.version or ''}")
    out.print(f"[bold]pgmq[/]: {pgmq}{pgmq_note}")
    applied = markup(", ".join(s.migrations_applied) or "none (up to date)")
    out.print(f"[bold]schema[/]: version {s.schema_version}; migrations applied: {applied}")
    if s.queues_created:
        out.print(f"[bold]queues created[/]: {markup(', '.join(s.queues_created))}")
    for change in report.pools:
        detail = markup(f" ({', '.join(change.fields)})" if change.fields else "")
        out.print(f"[bold]pool {markup(change.pool_id)}[/]: {markup(change.action)}{detail}")
    for seed in report.seeds:
        if seed.recovered:
            out.print(
                f"  [bold yellow]{markup(seed.pool_id)}: inventory lost in a DB1 crash, "
                "not reseeded[/]: " + markup(seed.recovered.summary())
            )
        if seed.added:
            rate = seed.added / seed.seconds if seed.seconds else 0
            out.print(
                f"  seeded {seed.added:,} units into {markup(seed.pool_id)} "
                f"in {seed.seconds:.2f} s ({rate:,.0f}/s); {seed.total:,} in all"
            )
    for pool_id, count in report.recovered.items():
        out.print(
            f"  {count} units skipped by aborted claims put back on sale in {markup(pool_id)}"
        )


@app.command()
def status(as_json: bool = JsonOption) -> None:
    """One-shot state of the event: units per pool, queue and DLQ depth, pgmq in use."""
    settings = _settings()
    data = lifecycle.status(settings)
    if as_json:
        _print_json(data)
        return
    table = Table(title="pools")
    counted = ("inventory", "available", "locked", "consumed", "rejected", "dead_lettered")
    for column in ("pool", *counted, "paused"):
        header = {"inventory": "units", "dead_lettered": "dead"}.get(column, column)
        table.add_column(header, justify="left" if column == "pool" else "right")
    for pool in data["pools"]:
        table.add_row(
            cell(pool["pool_id"]),
            *(f"{pool[column]:,}" for column in counted),
            "yes" if pool["paused"] else "no",
        )
    out.print(table)
    for pool in data["pools"]:
        pid = markup(pool["pool_id"])
        if pool["recovering"]:
            err.print(
                f"[bold red]pool {pid}: inventory lost in a DB1 crash and not rebuilt yet[/]: "
                "its figures above are not to be trusted and claims answer `recovering`. "
                "A running drain worker or the maintenance job rebuilds it; "
                "`intake recover` does it now."
            )
        elif pool["last_rebuild"]:
            rebuilt = pool["last_rebuild"]
            out.print(
                f"pool {pid}: rebuilt after a DB1 crash at {markup(rebuilt['rebuilt_at'])} "
                f"(by {markup(rebuilt['trigger'])}): {rebuilt['units']:,} units, "
                f"{rebuilt['locked']:,} held, {rebuilt['consumed']:,} sold, "
                f"{rebuilt['released']:,} back on sale, in {rebuilt['seconds']} s"
            )
    q, d = data["queue"], data["dlq"]
    age = f", oldest {q['oldest_age_s']} s" if q["oldest_age_s"] is not None else ""
    out.print(f"queue [bold]{markup(q['name'])}[/]: {q['depth']:,} waiting{age}")
    out.print(f"dead letters [bold]{markup(d['name'])}[/]: {d['depth']:,}")
    pgmq = data["pgmq"]
    note = "" if pgmq["version_from"] == "pg_extension" else f" ({pgmq['version_from']})"
    out.print("pgmq: " + markup(f"{pgmq['source']} {pgmq['version'] or ''}{note}"))
    metrics = data["metrics"]
    age = metrics["last_age_s"]
    out.print(
        f"metrics: {markup(metrics['description'])}; "
        + (f"last collected {age:.0f} s ago" if age is not None else "none collected yet")
    )


@app.command("watch")
def watch_command(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (scripts, tests)."),
    refresh: float = typer.Option(
        1.0, "--refresh", min=0.2, max=60, callback=_finite, help="Seconds between redraws."
    ),
    as_json: bool = typer.Option(False, "--json", help="With --once: the frame's figures as JSON."),
) -> None:
    """Live view of the engine: units per pool, queue, velocity, ETA, DLQ, workers.

    Reads engine_metrics (collected every 5 s by pg_cron; by watch itself
    where no pg_cron job does). Metrics older than 15 s are flagged STALE;
    a worker without a heartbeat for 10 s is shown as silent. Ctrl-C exits.
    """
    settings = _settings()
    if as_json and not once:
        raise UsageError("--json prints one frame: use it with --once")
    if once:
        snap = watch.snapshot(settings)
        if as_json:
            _print_json(snap.as_json())
        else:
            watch.print_once(snap)
        return
    watch.live(settings, refresh)


@app.command("demo")
def demo_command(
    buyers: int = typer.Option(100_000, "--buyers", min=1, max=1_000_000, help="Distinct buyers."),
    units: int = typer.Option(10_000, "--units", min=1, max=10_000_000, help="Units on sale."),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="`intake drain` processes."),
    connections: int = typer.Option(
        64, "--herd-connections", min=1, max=250, help="Connections the herd claims through."
    ),
    decline_share: float = testhook.share_option(
        0.03, "--decline-share", "Share of payments the webhook declines."
    ),
    fail_share: float = testhook.share_option(
        0.03,
        "--fail-share",
        "Share of intents whose first webhook call fails (503), then succeeds on retry.",
    ),
    directory: Path = typer.Option(
        None,
        "--dir",
        help="Where the demo's intake.yaml, clusters and logs live "
        "(default .intake-demo, env INTAKE_DEMO_DIR).",
        show_default=False,
    ),
    keep: bool = typer.Option(
        False, "--keep", help="Leave the event up afterwards (inspect it with -c DIR/intake.yaml)."
    ),
    no_watch: bool = typer.Option(
        False, "--no-watch", help="Print a progress line every 5 s instead of the live view."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
) -> None:
    """The whole engine under a herd, on embedded clusters, with a final report.

    up → test webhook (declining and transiently failing a few percent) →
    WORKERS drain processes → BUYERS claim concurrently → live view while it
    drains → report (claimed, committed, rejected, dead-lettered, oversold,
    duplicates in DB2, timings) → down. Exits 1 unless nothing was oversold,
    nothing is duplicated in DB2 and every claim is accounted for.
    """
    plan = demo.DemoPlan(
        buyers=buyers,
        units=units,
        workers=workers,
        herd_connections=connections,
        decline_share=decline_share,
        fail_share=fail_share,
        directory=(directory or demo.default_directory()).resolve(),
    )
    console = err if as_json else out
    report = demo.run(plan, console, live_view=console.is_terminal and not no_watch, keep=keep)
    if as_json:
        _print_json(report.as_json())
    else:
        demo.render_report(report, out)
        if keep:
            out.print(f"left up: intake -c {markup(plan.directory / 'intake.yaml')} watch")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def recover(
    pool_id: str | None = typer.Option(None, "--pool", help="Only this pool."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what a rebuild would build; change nothing."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Rebuild inventories that a DB1 crash emptied, from the durable facts.

    A crash of DB1 empties its UNLOGGED inventory. Claims then answer
    `recovering` (never sold_out, never a unit) until the inventory is rebuilt
    exactly from what survived: the queue, its archive, the DLQ and
    intent_state. Running drain workers and the maintenance job do that by
    themselves; this command does it now, and --dry-run shows what it would
    build. A pool whose inventory is whole is left alone.
    """
    settings = _settings()
    if pool_id is not None and (reason := config.check_pool_id(pool_id)):
        raise UsageError(f"pool id: {reason}")
    reports = lifecycle.recover(settings, pool_id, dry_run=dry_run)
    if as_json:
        _print_json({"dry_run": dry_run, "pools": [r.as_json() for r in reports]})
        return
    for report in reports:
        pid = markup(report.pool_id)
        state = "inventory LOST (crash)" if report.lost else "inventory whole"
        if report.plan is not None:
            p = report.plan
            out.print(
                f"pool {pid}: {state}; a rebuild would build {p.units:,} units from "
                f"{p.intents:,} intents: {p.locked:,} held, {p.consumed:,} sold, "
                f"{p.released:,} back on sale, numbering after {p.high_water:,}"
                + (f"; {p.conflicts} conflicting claims" if p.conflicts else "")
            )
        elif report.rebuilt is not None:
            out.print(f"pool {pid}: " + markup(report.rebuilt.summary()))
        else:
            out.print(f"pool {pid}: {state}; nothing to do")


@app.command()
def claim(
    pool_id: str = typer.Argument(..., help="The pool to claim from."),
    user_id: str = typer.Argument(..., help="The buyer (trusted backends name the user)."),
    as_json: bool = JsonOption,
) -> None:
    """Claim one unit for USER_ID, as a trusted backend would.

    Exit 0 when the user holds a unit (claimed, already_claimed, limit_reached);
    75 (try again later) when the answer is `recovering`: DB1 lost its inventory
    in a crash and is rebuilding it; 1 for any other answer (sold_out, paused…).
    """
    settings = _settings()
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    if reason := config.check_user_id(user_id):
        raise UsageError(f"user id: {reason}")
    with connect(endpoints(settings).db1, "DB1") as conn:
        result = claims.claim(conn, pool_id, user_id)
    if result.outcome == "unknown_pool":
        raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
    if as_json:
        _print_json(result.as_json())
    else:
        shown = " ".join(
            f"{k}={v}" for k, v in result.as_json().items() if v is not None and k != "outcome"
        )
        out.print(markup(f"{result.outcome}: {shown}"))
    if result.outcome == "recovering":
        raise typer.Exit(code=claims.RECOVERING_EXIT)
    if not result.holds_unit:
        raise typer.Exit(code=1)


@app.command()
def burst(
    pool_id: str = typer.Argument(..., help="The pool to claim from."),
    users: int = typer.Option(2000, "--users", min=1, max=1_000_000, help="Distinct buyers."),
    concurrency: int = typer.Option(
        64, "--concurrency", min=1, max=1000, help="Simultaneous connections."
    ),
    as_json: bool = JsonOption,
) -> None:
    """A small herd: USERS distinct buyers each claim once, CONCURRENCY at a time."""
    settings = _settings()
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    db1 = endpoints(settings).db1
    with connect(db1, "DB1") as conn:
        if not claims.pool_exists(conn, pool_id):
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
    run = time.time_ns()
    buyers = [f"buyer-{run}-{n}" for n in range(users)]
    report = asyncio.run(claims.burst(db1, pool_id, buyers, concurrency))
    outcomes = report.outcomes
    data = {
        "pool_id": pool_id,
        "users": users,
        "concurrency": concurrency,
        "outcomes": outcomes,
        "seconds": round(report.seconds, 3),
        "claims_per_sec": round(report.claims_per_sec, 1),
        "first_sold_out_s": None
        if report.first_sold_out_s is None
        else round(report.first_sold_out_s, 3),
        "latency_ms": {
            "p50": round(report.percentile(0.5), 2),
            "p99": round(report.percentile(0.99), 2),
        },
    }
    if as_json:
        _print_json(data)
        return
    shown = markup(", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))
    out.print(
        f"{users:,} buyers on {markup(pool_id)} in {report.seconds:.2f} s "
        f"({report.claims_per_sec:,.0f} claims/s, p50 {data['latency_ms']['p50']} ms, "
        f"p99 {data['latency_ms']['p99']} ms): {shown}"
    )


@app.command()
def down(
    force: bool = typer.Option(False, "--force", help="Discard queued and dead-lettered intents."),
    export: Path | None = typer.Option(
        None,
        "--export",
        help=(
            "Write queued and dead-lettered intents to FILE (JSON lines), synced and read back, "
            "before anything is torn down. FILE must be new and outside the state directory."
        ),
    ),
    as_json: bool = JsonOption,
) -> None:
    """Tear the event down (embedded clusters are stopped and removed).

    Refuses while intents are queued or dead-lettered, unless they are
    exported first (--export FILE) or knowingly discarded (--force). Only
    what intake made in the state directory is removed.
    """
    settings = _settings()
    report = lifecycle.down(settings, force=force, export=export)
    if as_json:
        _print_json(report.__dict__)
        return
    if report.exported is not None:
        out.print(f"exported {report.exported} intents to {markup(report.export_path)} (verified)")
    elif report.undrained or report.dead:
        out.print(f"discarded {report.undrained} queued and {report.dead} dead-lettered intents")
    out.print(
        "event torn down" + (" (embedded clusters removed)" if report.stopped_embedded else "")
    )
    if report.left_in_state_dir:
        names = ", ".join(report.left_in_state_dir)
        out.print(
            f"left {markup(settings.state_dir)} in place: it holds files intake did not make "
            f"({markup(names)})"
        )


# `drain --once` is run by cron and the like: waiting longer for a database
# than a run's period would pile runs up.
ONCE_CONNECT_TIMEOUT_S = 30


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
        callback=_finite,
        help="Seconds before a webhook call counts as failed.",
    ),
    shutdown_timeout: float = typer.Option(
        30.0,
        "--shutdown-timeout",
        min=0,
        max=3600,
        callback=_finite,
        help="On SIGINT/SIGTERM, seconds in-flight batches get to finish before being handed back.",
    ),
    connect_timeout: float | None = typer.Option(
        None,
        "--connect-timeout",
        min=0,
        max=86400,
        callback=_finite,
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
    """
    if log_level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    if log_format not in ("json", "text"):
        raise UsageError(f"--log-format: expected json or text, got {log_format!r}")
    settings = _settings()
    if pool is not None and (reason := config.check_pool_id(pool)):
        raise UsageError(f"--pool: {reason}")
    where = endpoints(settings)
    if connect_timeout is None and once:
        connect_timeout = ONCE_CONNECT_TIMEOUT_S
    drain = None
    if settings.log_drain_url:
        drain = logs.LogDrain(settings.log_drain_url, logs.DrainBuffer(settings.log_drain_buffer))
    logger = logs.configure(log_level, log_format, drain.buffer if drain else None)
    worker = drainer.Worker(
        settings,
        where.db1,
        where.db2,
        logger,
        concurrency=concurrency,
        once=once,
        pool_filter=pool,
        webhook_timeout_s=webhook_timeout,
        shutdown_timeout_s=shutdown_timeout,
        log_drain=drain,
        connect_timeout_s=connect_timeout,
    )
    stats = eventloop.run(worker.run())
    if as_json:
        _print_json(stats.as_json())


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    log_format: str = typer.Option("json", "--log-format", help="json | text"),
) -> None:
    """Admin API, Prometheus /metrics and the drain's HTTP tick, in one process.

    The API needs `Authorization: Bearer $INTAKE_ADMIN_TOKEN` when that
    variable is set; without it, serve starts only on a loopback address
    (and says the API is open to local users). /metrics is open on loopback,
    behind the token otherwise. SIGINT/SIGTERM stop it gracefully (exit 0):
    running ticks finish or hand their batch back. See docs/serve.md.
    """
    if log_format not in ("json", "text"):
        raise UsageError(f"--log-format: expected json or text, got {log_format!r}")
    token = serve_auth.token_from_env()
    if warning := serve_auth.check_start(host, token):
        err.print(markup(warning))
    settings = _settings()
    logger = logs.configure("info", log_format)
    asyncio.run(serve.serve(settings, host=host, port=port, token=token, logger=logger))


dlq_app = typer.Typer(help="Inspect and recover dead-lettered intents.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _dlq_connection() -> tuple[config.Settings, Any]:
    settings = _settings()
    return settings, connect(endpoints(settings).db1, "DB1")


@dlq_app.command("list")
def dlq_list(
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=1_000_000, help="Show at most this many."
    ),
    as_json: bool = JsonOption,
) -> None:
    """List dead letters: id, pool, user, state reached, attempts, last error."""
    settings, connection = _dlq_connection()
    with connection as conn:
        letters = dead_letters.list_letters(conn, settings.dlq_name, limit)
    if as_json:
        _print_json([letter.as_json() for letter in letters])
        return
    table = Table(title=f"dead letters in {markup(settings.dlq_name)}")
    for column in ("id", "pool", "user", "state", "attempts", "last error"):
        table.add_column(column)
    for letter in letters:
        data = letter.as_json()
        # All but the numbers come from the message, written by whoever wrote it.
        table.add_row(
            str(letter.msg_id),
            cell(data["pool_id"]),
            cell(data["user_id"]),
            cell(letter.state),
            str(letter.attempts),
            cell(letter.last_error or ""),
        )
    out.print(table)


@dlq_app.command("show")
def dlq_show(msg_id: int = typer.Argument(..., help="Dead letter id (from `dlq list`).")) -> None:
    """Show one dead letter in full, with what DB1 knows of its intent (JSON)."""
    settings, connection = _dlq_connection()
    with connection as conn:
        _print_json(dead_letters.show(conn, settings.dlq_name, msg_id))


@dlq_app.command("replay")
def dlq_replay(
    msg_ids: list[int] | None = typer.Argument(None, help="Dead letter ids to replay."),
    replay_all: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
    as_json: bool = JsonOption,
) -> None:
    """Put dead letters back on the queue, with their idempotency key and state.

    A validated intent is not sent to the webhook again: only its commit is
    retried. Replay once downstream (webhook, DB2) has recovered.
    """
    selected = dead_letters.check_selection(msg_ids, replay_all)
    settings, connection = _dlq_connection()
    with connection as conn:
        replayed = dead_letters.replay(
            conn, settings.queue_name, settings.dlq_name, selected, dry_run=dry_run
        )
    if as_json:
        _print_json(replayed)
        return
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {len(replayed)} intents")
    for item in replayed:
        after = f" → message {item['msg_id_after']}" if item["msg_id_after"] else ""
        out.print(
            markup(
                f"  {item['msg_id']} {item['pool_id']} {item['idempotency_key']} "
                f"({item['state']}){after}"
            )
        )


@dlq_app.command("purge")
def dlq_purge(
    yes: bool = typer.Option(False, "--yes", help="Confirm: the dead letters are deleted."),
) -> None:
    """Delete every dead letter. Export them first: `intake dlq list --json > dead.json`."""
    if not yes:
        raise UsageError(dead_letters.PURGE_RULE)
    settings, connection = _dlq_connection()
    with connection as conn:
        purged = dead_letters.purge(conn, settings.dlq_name)
    out.print(f"purged {purged} dead letters from {markup(settings.dlq_name)}")


pool_app = typer.Typer(help="Pause or resume a pool while the event runs.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


def _set_paused(pool_id: str, paused: bool) -> None:
    settings = _settings()
    with connect(endpoints(settings).db1, "DB1") as conn:
        controls.set_paused(conn, pool_id, paused)
    out.print(f"pool {markup(pool_id)}: {'paused' if paused else 'resumed'}")


@pool_app.command("pause")
def pool_pause(pool_id: str = typer.Argument(..., help="The pool to pause.")) -> None:
    """Claims answer "paused"; workers hand the pool's intents back until resumed."""
    _set_paused(pool_id, True)


@pool_app.command("resume")
def pool_resume(pool_id: str = typer.Argument(..., help="The pool to resume.")) -> None:
    """Claims and draining go on where they stopped."""
    _set_paused(pool_id, False)


config_app = typer.Typer(help="Change a pool's live settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("set")
def config_set(
    pool_id: str = typer.Argument(..., help="The pool to change."),
    assignments: list[str] = typer.Argument(
        ..., help="KEY=VALUE: " + ", ".join(config.LIVE_SETTINGS)
    ),
    as_json: bool = JsonOption,
) -> None:
    """Change live settings (checked like intake.yaml); running workers use them at their
    next batch. `intake up` sets them back to what intake.yaml says."""
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    changes = controls.parse_assignments(assignments)
    settings = _settings()
    where = endpoints(settings)
    applied = controls.set_settings(where.db1, where.db2, pool_id, changes)
    # A URL stored before credentials were refused still never reaches the screen.
    shown = {
        key: tuple(config.redact(v) if isinstance(v, str) else v for v in pair)
        for key, pair in applied.items()
    }
    if as_json:
        _print_json({key: {"old": old, "new": new} for key, (old, new) in shown.items()})
        return
    for key, (old, new) in shown.items():
        out.print(markup(f"pool {pool_id}: {key} {old} → {new}"))


@app.command()
def gateway(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8081, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=256, help="Processes sharing the port (SO_REUSEPORT)."
    ),
) -> None:
    """The buyers' door: claims over HTTP with a JWT, micro-batched into DB1.

    POST /v1/pools/{pool}/claim with `Authorization: Bearer <JWT>`; the buyer is
    the token's `sub` (a UUID). Tokens are checked with the HS256 secret in
    INTAKE_JWT_SECRET, or the keys at gateway.jwks_url. See docs/gateway.md.
    """
    from intake_cli.faces.gateway import server

    settings = _settings()
    server.run(settings, endpoints(settings).db1, host, port, workers)


app.command("webhook-server")(testhook.webhook_server_command)
bench_app.command("drain")(bench_drain.drain_command)
bench_app.command("metrics")(bench_metrics.metrics_command)
bench_app.command("recovery")(bench_recovery.recovery_command)
bench_app.command("e2e")(bench_e2e.e2e_command)
bench_app.command("seeding")(bench_seeding.seeding_command)
bench_app.command("gateway")(bench_gateway.gateway_command)
bench_app.command("tick")(bench_tick.tick_command)
bench_app.command("dashboard")(bench_dashboard.dashboard_command)
app.add_typer(bench_app, name="bench", help="Benchmarks against baselines from the same run.")


@app.command("render")
def render_command(
    target: str = typer.Option(..., "--target", help="What to render for: supabase."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the db1/ and db2/ sets."),
    force: bool = typer.Option(False, "--force", help="Replace intake migrations already there."),
    queue_name: str = typer.Option(
        "intents", "--queue-name", help="intake.yaml's queue_name (the functions name its table)."
    ),
    drain_tick: bool = typer.Option(
        False,
        "--drain-tick",
        help="Add the pg_cron + pg_net job that POSTs to `intake serve`'s drain tick every "
        "5 s (URL and token from Supabase Vault).",
    ),
    timestamp: str | None = typer.Option(
        None, "--timestamp", help="First file's version, YYYYMMDDHHMMSS UTC (default: now)."
    ),
) -> None:
    """Write DB1 and DB2 as ordered migration files (`supabase db push` or `psql -f`).

    Queues, pools and inventory are not in them: run `intake up` against the
    project afterwards (docs/supabase.md).
    """
    if target not in render.TARGETS:
        raise UsageError(f"--target {target!r}: expected one of {', '.join(render.TARGETS)}")
    stamp = (
        render.parse_stamp(timestamp)
        if timestamp is not None
        else datetime.now(UTC).replace(microsecond=0)
    )
    files = render.supabase_migrations(stamp, queue_name, drain_tick=drain_tick)
    for path in render.write(files, out_dir, force=force):
        out.print(markup(path), highlight=False)


@app.command()
def version() -> None:
    """Print intake's version."""
    out.print(__version__)


def main() -> None:
    try:
        app()
    except IntakeError as exc:
        err.print("[bold red]error:[/]", markup(exc, lines=True), highlight=False)
        sys.exit(exc.exit_code)
    except psycopg.Error as exc:
        # A database that fails mid-command (a DB1 crash during `intake burst`,
        # a read-only or restarting server) is a fault to report, not a bug to
        # trace back: what was done before it stands.
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        err.print("[bold red]error:[/] database:", markup(reason, lines=True), highlight=False)
        sys.exit(ConnectionFailed.exit_code)
