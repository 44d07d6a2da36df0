"""Setting the event up, reading its state, rebuilding it after a crash, tearing it down."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from intake_cli.engine import lifecycle, render
from intake_cli.faces import watch
from intake_cli.faces.cli.root import JsonOption, app, err, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.display import cell, markup
from intake_cli.platform.errors import UsageError


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
    settings = load_settings()
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
        print_json(
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
    settings = load_settings()
    data = lifecycle.status(settings)
    if as_json:
        print_json(data)
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
    for pool in data["pools"]:
        webhook = pool["webhook"]
        if webhook is not None and webhook["governed"]:
            # An open breaker is news an operator must not miss: on stderr.
            (err if webhook["breaker"] == "open" else out).print(
                watch.webhook_line(pool["pool_id"], webhook)
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
    replication = data["replication"]
    names = ", ".join(
        f"{s['name']} ({s['sync_state']})" for s in replication["standbys"] if s["name"]
    )
    line = f"replication: {replication['verdict']}" + (f" [{markup(names)}]" if names else "")
    line += f": {replication['meaning']}"
    if replication["verdict"] == "asynchronous":
        err.print(f"[bold red]{line}[/]")
    else:
        out.print(line)


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
    settings = load_settings()
    if pool_id is not None and (reason := config.check_pool_id(pool_id)):
        raise UsageError(f"pool id: {reason}")
    reports = lifecycle.recover(settings, pool_id, dry_run=dry_run)
    failed = [r for r in reports if r.error is not None]
    if as_json:
        print_json({"dry_run": dry_run, "pools": [r.as_json() for r in reports]})
        if failed:
            raise typer.Exit(1)
        return
    for report in reports:
        pid = markup(report.pool_id)
        state = "inventory LOST (crash)" if report.lost else "inventory whole"
        if report.error is not None:
            err.print(f"pool {pid}: {state}; the rebuild failed: {markup(report.error)}")
        elif report.plan is not None:
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
    if failed:
        raise typer.Exit(1)


@app.command()
def failover(
    how: str = typer.Option(
        "kill", "--how", help="kill: SIGKILL DB1's postmaster; immediate: pg_ctl stop -m immediate."
    ),
    keep_data: bool = typer.Option(
        False,
        "--keep-data",
        help="Keep the old primary's data directory (default: removed, as a lost host).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Lose the embedded DB1 and promote its synchronous standby, mid-sale if you like.

    For trying failover before trusting it (embedded.standby: true): DB1's
    postmaster is killed, its data directory removed (the host is gone), the
    standby promoted. Workers and buyers on the DSN intake gives them (both
    nodes, target_session_attrs=read-write) find the new primary by
    themselves, and a worker rebuilds the inventory there. The next
    `intake up` makes a new standby. A configured DB1 is promoted by its own
    HA: docs/failover.md.
    """
    if how not in ("kill", "immediate"):
        raise UsageError(f"--how: expected kill or immediate, got {how!r}")
    settings = load_settings()
    promotion = lifecycle.failover(settings, how=how, lose_host=not keep_data)  # type: ignore[arg-type]
    if as_json:
        print_json(promotion.as_json())
        return
    lost = "its data directory removed" if promotion.lost_host else "its data directory kept"
    out.print(
        f"DB1 on port {promotion.old_port} stopped ({how}), {lost}; the standby on port "
        f"{promotion.new_port} is DB1 now (promoted in {promotion.promote_s:.2f} s, "
        f"{promotion.total_s:.2f} s in all)."
    )
    out.print(
        "Workers and buyers on both nodes' DSN reach it by themselves; `intake status` shows "
        "the rebuild. Run `intake up` to make a new standby."
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
    settings = load_settings()
    report = lifecycle.down(settings, force=force, export=export)
    if as_json:
        print_json(report.__dict__)
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


@app.command("render")
def render_command(
    target: str = typer.Option(..., "--target", help="What to render for: supabase."),
    # A str, not a Path: Path("") is ".", and an empty --out must be refused.
    out_dir: str = typer.Option(..., "--out", help="Directory for the db1/ and db2/ sets."),
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
    directory = render.out_directory(out_dir)
    stamp = (
        render.parse_stamp(timestamp)
        if timestamp is not None
        else datetime.now(UTC).replace(microsecond=0)
    )
    files = render.supabase_migrations(stamp, queue_name, drain_tick=drain_tick)
    for path in render.write(files, directory, force=force):
        out.print(markup(path), highlight=False)
