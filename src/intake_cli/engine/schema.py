"""Render, apply and version DB1's SQL.

Everything `intake up` changes in DB1's schema happens in one transaction:
pgmq (when missing), the numbered migrations not yet applied, the Supabase
compatibility pieces, the queues, and the functions and grants. Either all of
it is there afterwards or none of it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from pgmq.install import get_embedded_sql_version, install_pgmq_from_sql
from psycopg import sql

from intake_cli.engine import queue, telemetry
from intake_cli.platform.sqlfiles import queries, render, template_names

_MIGRATION_NAME = re.compile(r"^db1/migrations/(\d{4})_([a-z0-9_]+)\.sql(?:\.j2)?$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str


@dataclass(frozen=True)
class PgmqInstall:
    source: str  # extension | bundled-sql | existing-sql | unknown
    version: str | None
    # True where the version was read from pg_extension just now; False where
    # it is what intake recorded when it installed the bundled SQL.
    live: bool = False


@dataclass(frozen=True)
class SchemaReport:
    pgmq: PgmqInstall
    pgmq_installed_now: bool
    migrations_applied: tuple[str, ...]
    queues_created: tuple[str, ...]
    schema_version: int


def migrations() -> list[Migration]:
    found = []
    for template in template_names("db1/migrations"):
        match = _MIGRATION_NAME.match(template)
        if match is None:
            raise RuntimeError(f"migration file name not understood: {template}")
        found.append(Migration(int(match.group(1)), match.group(2), template))
    return found


def latest_version() -> int:
    return max(m.version for m in migrations())


def _q(name: str) -> str:
    return queries("db1")[name]


def _ensure_pgmq(conn: psycopg.Connection) -> tuple[PgmqInstall, bool]:
    """Use the pgmq extension where possible, else the SQL the pgmq package ships."""
    installed, available = conn.execute(_q("pgmq_extension")).fetchone()  # type: ignore[misc]
    if installed:
        return PgmqInstall("extension", installed, live=True), False
    schema_present = conn.execute(_q("pgmq_schema_exists")).fetchone()[0]  # type: ignore[index]
    if available and not schema_present:
        conn.execute("create extension if not exists pgmq")
        version = conn.execute(_q("pgmq_extension")).fetchone()[0]  # type: ignore[index]
        return PgmqInstall("extension", version, live=True), True
    if schema_present:
        # Installed before, by us (recorded) or by someone else: the SQL-only
        # install is not re-runnable, so it is never run twice.
        recorded = (
            conn.execute(_q("pgmq_install")).fetchone()
            if conn.execute(_q("intake_schema_exists")).fetchone()[0]  # type: ignore[index]
            else None
        )
        if recorded:
            return PgmqInstall(recorded[0], recorded[1]), False
        return PgmqInstall("existing-sql", None), False
    # Nested in the caller's transaction: a failure rolls back pgmq too.
    install_pgmq_from_sql(conn=conn)
    return PgmqInstall("bundled-sql", get_embedded_sql_version()), True


def _ensure_pg_cron(conn: psycopg.Connection) -> None:
    """Create pg_cron where the server preloads it; the metrics job needs it."""
    if telemetry.pg_cron_version(conn) is not None:
        return
    row = conn.execute(_q("pg_cron_ready")).fetchone()
    if row and row[0]:
        conn.execute("create extension if not exists pg_cron")


def queue_table(conn: psycopg.Connection, queue_name: str, prefix: str = "q") -> str:
    """A queue's table as SQL text, quoted by psycopg.

    pgmq names a queue's table q_<queue> and its archive a_<queue>.
    """
    return sql.Identifier("pgmq", f"{prefix}_{queue_name}").as_string(conn)


def apply_db1(conn: psycopg.Connection, queue_name: str, dlq_name: str) -> SchemaReport:
    """Bring DB1's schema to the current version; a no-op when it already is."""
    with conn.transaction():
        pgmq_install, pgmq_now = _ensure_pgmq(conn)
        conn.execute(render("db1/bootstrap.sql"))
        conn.execute(
            _q("record_pgmq_install"),
            {
                "source": pgmq_install.source,
                "version": pgmq_install.version,
            },
        )
        current = conn.execute(_q("schema_version")).fetchone()[0]  # type: ignore[index]
        applied = []
        for migration in migrations():
            if migration.version <= current:
                continue
            conn.execute(render(migration.template))
            conn.execute(
                _q("record_migration"), {"version": migration.version, "name": migration.name}
            )
            applied.append(f"{migration.version:04d}_{migration.name}")
        conn.execute(render("common/supabase_compat.sql"))
        _ensure_pg_cron(conn)
        created = tuple(q for q in (queue_name, dlq_name) if queue.ensure_queue(conn, q))
        table = queue_table(conn, queue_name)
        conn.execute(
            render(
                "db1/telemetry.sql.j2",
                queue_table=table,
                dlq_table=queue_table(conn, dlq_name),
            )
        )
        conn.execute(
            render(
                "db1/recovery.sql.j2",
                queue_table=table,
                archive_table=queue_table(conn, queue_name, "a"),
                dlq_table=queue_table(conn, dlq_name),
                dlq_archive_table=queue_table(conn, dlq_name, "a"),
            )
        )
        conn.execute(render("db1/functions.sql.j2", queue_table=table))
        telemetry.install_minute_loop(conn)
        telemetry.schedule(conn)
        version = conn.execute(_q("schema_version")).fetchone()[0]  # type: ignore[index]
    return SchemaReport(pgmq_install, pgmq_now, tuple(applied), created, version)


def is_provisioned(conn: psycopg.Connection) -> bool:
    return bool(conn.execute(_q("intake_schema_exists")).fetchone()[0])  # type: ignore[index]


def pgmq_in_use(conn: psycopg.Connection) -> PgmqInstall:
    """The pgmq DB1 runs on now (what `status` shows)."""
    extension_version, source, version = conn.execute(_q("pgmq_in_use")).fetchone()  # type: ignore[misc]
    recorded = PgmqInstall(source, version) if source is not None else None
    return choose_pgmq(recorded, extension_version)


def choose_pgmq(recorded: PgmqInstall | None, extension_version: str | None) -> PgmqInstall:
    """The extension's live version wins over what was recorded at install.

    `ALTER EXTENSION pgmq UPDATE` (a Supabase project moved from Postgres 15
    to 17 goes 1.4.4 → 1.5.1) changes pg_extension, not intake's record. The
    bundled SQL has no catalog entry that carries a version: for it the
    version intake installed is the one there is.
    """
    if extension_version is not None:
        return PgmqInstall("extension", extension_version, live=True)
    return recorded or PgmqInstall("unknown", None)
