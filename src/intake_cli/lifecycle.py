"""An event's life: `up` provisions it, `status` reports it, `down` tears it down."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from intake_cli import inventory, ledger, pools, queue, recovery, schema, telemetry
from intake_cli.config import PoolSettings, Settings
from intake_cli.db import Endpoints, connect, endpoints
from intake_cli.embedded import EmbeddedClusters
from intake_cli.errors import NotProvisioned, RefusedTeardown, UnknownPool
from intake_cli.sqlfiles import queries


@dataclass
class UpReport:
    endpoints: Endpoints
    schema: schema.SchemaReport
    pools: list[pools.PoolChange]
    seeds: list[pools.SeedResult] = field(default_factory=list)
    recovered: dict[str, int] = field(default_factory=dict)
    ledger_installed: bool = False


def prepare_ledger(settings: Settings, db2_dsn: str) -> bool:
    """Install the example ledger where wanted and missing; check every pool's RPC.

    Runs before DB1 is touched: a missing RPC stops `up` with nothing changed.
    True when the example ledger was installed now.
    """
    installed = False
    with connect(db2_dsn, "DB2") as conn:
        if settings.db2.installs_example_ledger and not ledger.example_installed(conn):
            installed = ledger.install_example(conn)
        for rpc in {ledger.RpcName.parse(p.commit_rpc_name) for p in settings.pools}:
            ledger.check_rpc(conn, rpc)
    return installed


def up(
    settings: Settings,
    on_seed_progress: Callable[[PoolSettings, int, int], None] | None = None,
) -> UpReport:
    # A listed inventory is read and checked whole before anything changes.
    listed = {
        pool.pool_id: inventory.read_ids(pool.inventory_file, pool.inventory)
        for pool in settings.pools
        if pool.inventory_file is not None
    }
    # A configured server that does not answer stops `up` before anything,
    # embedded clusters included, is created.
    for label, db in (("DB1", settings.db1), ("DB2", settings.db2)):
        if not db.embedded:
            with connect(db.dsn or "", label):
                pass
    where = endpoints(settings, start=True)
    ledger_installed = prepare_ledger(settings, where.db2)
    with connect(where.db1, "DB1") as conn:
        with conn.transaction():
            report = schema.apply_db1(conn, settings.queue_name, settings.dlq_name)
            # After the migrations (an older DB1 learns how many units it has)
            # and in the same transaction: a refusal changes nothing.
            pools.check_inventory(conn, settings.pools)
            changes = pools.reconcile(conn, settings.pools)
            for pool in settings.pools:
                if pool.pool_id in listed:
                    pools.load_listed(conn, pool, listed[pool.pool_id])
        result = UpReport(where, report, changes, ledger_installed=ledger_installed)
        for pool in settings.pools:

            def progress(done: int, total: int, pool: PoolSettings = pool) -> None:
                if on_seed_progress:
                    on_seed_progress(pool, done, total)

            result.seeds.append(pools.seed(conn, pool, progress))
            recovered = conn.execute(
                queries("db1")["recover_skipped_units"], {"pool_id": pool.pool_id}
            ).fetchone()[0]  # type: ignore[index]
            if recovered:
                result.recovered[pool.pool_id] = int(recovered)
        # A first row now: pg_cron's minute job may not start for a minute.
        telemetry.collect(conn)
    return result


def _require_provisioned(conn: psycopg.Connection) -> None:
    if not schema.is_provisioned(conn):
        raise NotProvisioned()


def status(settings: Settings) -> dict[str, Any]:
    where = endpoints(settings)
    with connect(where.db1, "DB1") as conn:
        _require_provisioned(conn)
        pool_rows = telemetry.pool_metrics(conn)
        mode = telemetry.schedule_mode(conn)
        age = telemetry.newest_age_s(telemetry.latest(conn))
        version = conn.execute(queries("db1")["schema_version"]).fetchone()[0]  # type: ignore[index]
        install = schema.pgmq_install(conn)
        rebuilds = recovery.last_rebuilds(conn)
        queues = {
            name: queue.metrics(conn, name) for name in (settings.queue_name, settings.dlq_name)
        }
    intents = queues[settings.queue_name]
    dead = queues[settings.dlq_name]
    return {
        "embedded": where.embedded,
        "state_dir": str(settings.state_dir) if where.embedded else None,
        "schema_version": version,
        "pgmq": {"source": install.source, "version": install.version},
        "pg_cron": mode.pg_cron,
        "metrics": {
            **mode.as_json(),
            "last_age_s": None if age is None else round(age, 1),
        },
        "queue": {
            "name": settings.queue_name,
            "depth": intents.queue_length,
            "oldest_age_s": intents.oldest_msg_age_sec,
            "total_enqueued": intents.total_messages,
        },
        "dlq": {"name": settings.dlq_name, "depth": dead.queue_length},
        "pools": [
            {
                "pool_id": row["pool_id"],
                "inventory": int(row["inventory"]),
                "available": int(row["available_slots"]),
                "locked": int(row["locked"]),
                "consumed": int(row["consumed"]),
                "rejected": int(row["rejected"]),
                "dead_lettered": int(row["dead_lettered"]),
                "paused": row["paused"],
                # After a DB1 crash, until the inventory is rebuilt: the
                # figures above are not to be trusted and claims answer
                # `recovering`.
                "recovering": row["recovering"],
                "last_rebuild": (
                    rebuilds[row["pool_id"]].as_json() if row["pool_id"] in rebuilds else None
                ),
            }
            for row in pool_rows
        ],
    }


@dataclass
class RecoverReport:
    pool_id: str
    lost: bool
    plan: recovery.Plan | None = None
    rebuilt: recovery.Rebuild | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "lost": self.lost,
            "plan": self.plan.as_json() if self.plan else None,
            "rebuilt": self.rebuilt.as_json() if self.rebuilt else None,
        }


def recover(
    settings: Settings, pool_id: str | None = None, *, dry_run: bool = False
) -> list[RecoverReport]:
    """Rebuild every pool (or one) whose inventory a DB1 crash emptied.

    Workers and the maintenance job do the same by themselves; this is the
    operator's way to see it and to do it now.
    """
    where = endpoints(settings)
    with connect(where.db1, "DB1") as conn:
        _require_provisioned(conn)
        known = list(pools.existing(conn))
        if pool_id is not None and pool_id not in known:
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
        reports = []
        for pid in [pool_id] if pool_id else known:
            lost = recovery.is_lost(conn, pid)
            report = RecoverReport(pid, lost)
            if dry_run:
                report.plan = recovery.plan(conn, pid)
            elif lost:
                report.rebuilt = recovery.rebuild(conn, pid, "recover")
            reports.append(report)
    return reports


def _export(conn: psycopg.Connection, queue_names: tuple[str, ...], target: Path) -> int:
    """Write every message still queued or dead-lettered, one JSON object per line."""
    count = 0
    with target.open("w", encoding="utf-8") as out:
        for name in queue_names:
            query = sql.SQL(
                "select msg_id, read_ct, enqueued_at, message from {} order by msg_id"
            ).format(sql.Identifier("pgmq", f"q_{name}"))
            for msg_id, read_ct, enqueued_at, message in conn.execute(query):
                record = {
                    "queue": name,
                    "msg_id": msg_id,
                    "read_ct": read_ct,
                    "enqueued_at": enqueued_at.isoformat(),
                    "message": message,
                }
                out.write(json.dumps(record, sort_keys=True) + "\n")
                count += 1
    return count


@dataclass
class DownReport:
    exported: int | None
    undrained: int
    dead: int
    stopped_embedded: bool


def down(settings: Settings, *, force: bool = False, export: Path | None = None) -> DownReport:
    """Tear the event down, refusing while intents would be lost."""
    clusters = EmbeddedClusters(settings.state_dir, settings.embedded)
    if (settings.db1.embedded or settings.db2.embedded) and not clusters.load():
        return DownReport(None, 0, 0, stopped_embedded=False)
    where = endpoints(settings)
    undrained = dead = 0
    exported = None
    with connect(where.db1, "DB1") as conn:
        if schema.is_provisioned(conn):
            names = set(queue.queue_names(conn))
            undrained = (
                queue.metrics(conn, settings.queue_name).queue_length
                if settings.queue_name in names
                else 0
            )
            dead = (
                queue.metrics(conn, settings.dlq_name).queue_length
                if settings.dlq_name in names
                else 0
            )
            if (undrained or dead) and export is not None:
                present = tuple(n for n in (settings.queue_name, settings.dlq_name) if n in names)
                exported = _export(conn, present, export)
            elif (undrained or dead) and not force:
                raise RefusedTeardown(
                    f"{undrained} intents are still queued and {dead} are dead-lettered. "
                    "Drain them (`intake drain`), export them (`intake down --export FILE`), "
                    "or discard them (`intake down --force`)"
                )
            if not settings.db1.embedded:
                with conn.transaction():
                    telemetry.unschedule(conn)
                    for name in (settings.queue_name, settings.dlq_name):
                        queue.drop_queue(conn, name)
                    conn.execute("drop function if exists public.claim_resource(text)")
                    conn.execute("drop schema if exists intake cascade")
    stopped = False
    if where.embedded:
        clusters.stop()
        stopped = True
    return DownReport(exported, undrained, dead, stopped)
