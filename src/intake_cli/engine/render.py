"""DB1 and DB2 as migration files for a Supabase project (`intake render`).

A Supabase user keeps their schema in `supabase/migrations` and applies it
with `supabase db push`; intake's SQL goes there as ordered files, each one
safe to apply again. DB1's set is the intake schema, its migrations (each
guarded by its record in intake.schema_version, the ledger `intake up`
keeps too), its functions and grants, and its pg_cron jobs; DB2's set is the
example ledger. What is data stays with `intake up` run against the project:
the queues, the pools and their inventory (docs/supabase.md).

Nothing here creates Supabase's roles or auth.uid(): the files refuse a
database without them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import sql

from intake_cli.engine import schema
from intake_cli.platform.config import QUEUE_NAME_PATTERN
from intake_cli.platform.errors import UsageError
from intake_cli.platform.sqlfiles import render

TARGETS = ("supabase",)
STAMP_FORMAT = "%Y%m%d%H%M%S"
# Bodies of the example's commit RPC that earlier intakes installed: the
# DB2 file replaces them in place; any other public.finalize_transaction is
# somebody's ledger and makes the file stop.
_EARLIER_EXAMPLES = ("ef0839e96f23057bd953c767d6c23bd2", "c64e9d9c531adc433c33a8a16e4bac63")


@dataclass(frozen=True)
class MigrationFile:
    """One rendered file: which set it belongs to (db1 | db2), its name, its SQL."""

    group: str
    name: str
    sql: str


def parse_stamp(text: str) -> datetime:
    try:
        return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(
            f"--timestamp {text!r}: expected YYYYMMDDHHMMSS (UTC), as Supabase names migrations"
        ) from None


def _queue_table(queue_name: str, prefix: str = "q") -> str:
    return sql.Identifier("pgmq", f"{prefix}_{queue_name}").as_string(None)


def _embedded(text: str, tag: str) -> str:
    """`text` for a $tag$ … $tag$ string; refused if it holds the tag itself."""
    if f"${tag}$" in text:
        raise RuntimeError(f"SQL to embed contains its own quote ${tag}$")
    return text


def _db1(queue_name: str, dlq_name: str, drain_tick: bool) -> list[tuple[str, str]]:
    files = [
        ("pgmq", render("supabase/db1_pgmq.sql.j2")),
        ("schema", render("supabase/db1_schema.sql.j2", bootstrap=render("db1/bootstrap.sql"))),
    ]
    for migration in schema.migrations():
        body = _embedded(render(migration.template), "intake_migration_body")
        files.append(
            (
                f"{migration.version:04d}_{migration.name}",
                render(
                    "supabase/db1_migration.sql.j2",
                    version=str(migration.version),
                    name=migration.name,
                    body=body,
                ),
            )
        )
    queue, dlq = _queue_table(queue_name), _queue_table(dlq_name)
    functions = render(
        "supabase/db1_functions.sql.j2",
        queue_name=queue_name,
        dlq_name=dlq_name,
        telemetry=render("db1/telemetry.sql.j2", queue_table=queue, dlq_table=dlq),
        recovery=render(
            "db1/recovery.sql.j2",
            queue_table=queue,
            archive_table=_queue_table(queue_name, "a"),
            dlq_table=dlq,
            dlq_archive_table=_queue_table(dlq_name, "a"),
        ),
        functions=render("db1/functions.sql.j2", queue_table=queue),
    )
    cron = render(
        "supabase/db1_cron.sql.j2",
        cron_seconds=_embedded(render("db1/cron.sql.j2", seconds_schedule=True), "seconds"),
        cron_minutes=_embedded(render("db1/cron.sql.j2", seconds_schedule=False), "minutes"),
        minute_loop=_embedded(render("db1/minute_loop.sql"), "minute_loop"),
    )
    files += [("functions", functions), ("cron", cron)]
    if drain_tick:
        files.append(("drain_tick", render("supabase/db1_drain_tick.sql")))
    return files


def _db2() -> list[tuple[str, str]]:
    current = render("db2/finalize_transaction.sql").split("$finalize$")[1]
    known = (hashlib.md5(current.encode()).hexdigest(), *_EARLIER_EXAMPLES)
    ledger = render(
        "supabase/db2_example_ledger.sql.j2",
        example_ledger=_embedded(render("db2/example_ledger.sql"), "example_body"),
        example_upgrade=render("db2/example_upgrade.sql"),
        realtime=render("db2/realtime.sql"),
        known_bodies=", ".join(f"'{md5}'" for md5 in known),
    )
    return [("example_ledger", ledger)]


def supabase_migrations(
    stamp: datetime, queue_name: str = "intents", *, drain_tick: bool = False
) -> list[MigrationFile]:
    """Every file, in the order they apply: DB1's, then DB2's, one second apart."""
    if not QUEUE_NAME_PATTERN.fullmatch(queue_name):
        raise UsageError(
            f"--queue-name {queue_name!r}: expected intake.yaml's queue_name "
            "(a-z, 0-9 and _, starting with a letter, at most 40 characters)"
        )
    ordered = [
        ("db1", what, text) for what, text in _db1(queue_name, f"{queue_name}_dlq", drain_tick)
    ]
    ordered += [("db2", what, text) for what, text in _db2()]
    return [
        MigrationFile(
            group,
            f"{(stamp + timedelta(seconds=n)).strftime(STAMP_FORMAT)}_intake_{what}.sql",
            text,
        )
        for n, (group, what, text) in enumerate(ordered)
    ]


def write(files: list[MigrationFile], out: Path, *, force: bool = False) -> list[Path]:
    """Write the files under out/db1 and out/db2; never over a file unless forced.

    Every target is checked before the first one is written, so a refusal
    leaves nothing half written.
    """
    targets = [(out / f.group / f.name, f) for f in files]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not force:
        existing = [str(path) for path, _ in targets if path.exists()]
        # Files from an earlier render under other names would apply twice.
        earlier = sorted(
            str(p)
            for group in ("db1", "db2")
            if (out / group).is_dir()
            for p in (out / group).glob("*_intake_*.sql")
            if p not in {path for path, _ in targets}
        )
        if existing or earlier:
            shown = ", ".join((existing + earlier)[:3])
            raise UsageError(
                f"--out {out}: holds intake migrations already ({shown}); "
                "choose an empty directory, or pass --force to replace them"
            )
    for group in {f.group for f in files}:
        (out / group).mkdir(parents=True, exist_ok=True)
        if force:
            for stale in (out / group).glob("*_intake_*.sql"):
                stale.unlink()
    for path, f in targets:
        path.write_text(f.sql, encoding="utf-8")
    return [path for path, _ in targets]
