"""An event's life: `up` provisions it, `status` reports it, `down` tears it down."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from intake_cli.engine import pools, queue, recovery, schema, telemetry
from intake_cli.engine.drain import ledger
from intake_cli.engine.pools import PoolChange, SeedResult
from intake_cli.platform import inventory, standby
from intake_cli.platform.config import PoolSettings, Settings
from intake_cli.platform.db import Endpoints, connect, endpoints, first_line
from intake_cli.platform.embedded import EmbeddedClusters
from intake_cli.platform.errors import (
    ExportFailed,
    NotProvisioned,
    RefusedTeardown,
    UnknownPool,
    UsageError,
)
from intake_cli.platform.jsontext import read_json
from intake_cli.platform.sqlfiles import queries


@dataclass
class UpReport:
    endpoints: Endpoints
    schema: schema.SchemaReport
    # The types by their own names: inside the class, `pools` is the field.
    pools: list[PoolChange]
    seeds: list[SeedResult] = field(default_factory=list)
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


def _one_at_a_time(func: Callable[..., UpReport]) -> Callable[..., UpReport]:
    """One `intake up` per state directory at a time: a second waits for the
    first, then finds its clusters running and its schema applied."""

    @functools.wraps(func)
    def serialized(settings: Settings, *args: Any, **kwargs: Any) -> UpReport:
        if not (settings.db1.embedded or settings.db2.embedded):
            return func(settings, *args, **kwargs)
        with EmbeddedClusters(settings.state_dir, settings.embedded).locked():
            return func(settings, *args, **kwargs)

    return serialized


@_one_at_a_time
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
        governors = telemetry.webhook_governors(conn)
        mode = telemetry.schedule_mode(conn)
        age = telemetry.newest_age_s(telemetry.latest(conn))
        version = conn.execute(queries("db1")["schema_version"]).fetchone()[0]  # type: ignore[index]
        install = schema.pgmq_in_use(conn)
        rebuilds = recovery.last_rebuilds(conn)
        replication = standby.replication_state(conn)
        queues = {
            name: queue.metrics(conn, name) for name in (settings.queue_name, settings.dlq_name)
        }
    intents = queues[settings.queue_name]
    dead = queues[settings.dlq_name]
    return {
        "embedded": where.embedded,
        "state_dir": str(settings.state_dir) if where.embedded else None,
        "schema_version": version,
        "pgmq": {
            "source": install.source,
            "version": install.version,
            # pg_extension, read now; else the version recorded at install.
            "version_from": "pg_extension" if install.live else "recorded at install",
        },
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
        "replication": replication_report(replication),
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
                # Live, not collected: a Retry-After or an open breaker lasts seconds.
                "webhook": (
                    governors[row["pool_id"]].as_json() if row["pool_id"] in governors else None
                ),
            }
            for row in pool_rows
        ],
    }


# What each verdict on DB1's standbys means for the promise (docs/failover.md).
REPLICATION_MEANING = {
    "none": "no standby streams from DB1: losing its host loses the event",
    "synchronous": "every standby confirms each commit: a promotion loses nothing",
    "asynchronous": (
        "a standby is not waited for: promoting it may lose acknowledged claims (up to its "
        "lag); set synchronous_standby_names (Patroni: synchronous_mode) to lose none"
    ),
    "unknown": "this role may not read pg_stat_replication (grant pg_monitor to see it)",
}


def replication_report(state: standby.ReplicationState) -> dict[str, Any]:
    return {
        "verdict": state.verdict,
        "meaning": REPLICATION_MEANING[state.verdict],
        "synchronous_standby_names": state.synchronous_standby_names,
        "standbys": [
            {
                "name": s.application_name,
                "state": s.state,
                "sync_state": s.sync_state,
                "flush_lag_bytes": s.flush_lag_bytes,
                "replay_lag_bytes": s.replay_lag_bytes,
            }
            for s in state.standbys
        ],
    }


@dataclass
class RecoverReport:
    pool_id: str
    lost: bool
    plan: recovery.Plan | None = None
    rebuilt: recovery.Rebuild | None = None
    # Why the rebuild failed (DB1's first line); the other pools go on.
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "lost": self.lost,
            "plan": self.plan.as_json() if self.plan else None,
            "rebuilt": self.rebuilt.as_json() if self.rebuilt else None,
            "error": self.error,
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
            try:
                if dry_run:
                    report.plan = recovery.plan(conn, pid)
                elif lost:
                    report.rebuilt = recovery.rebuild(conn, pid, "recover")
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    raise
                report.error = first_line(exc)
            reports.append(report)
    return reports


# How long `down` waits for a claim or a drain batch to let go of the queues.
QUEUE_LOCK_TIMEOUT = "10s"


def _export_target(settings: Settings, export: Path) -> Path:
    """Where the export will go, checked before anything is read or torn down.

    Never inside the state directory (the teardown removes it), never over an
    existing file (it may be the only copy of an earlier export).
    """
    shown = f"--export {export}"
    target = Path(os.path.abspath(export))
    real = target.resolve()
    state = settings.state_dir.resolve()
    if real == state or state in real.parents:
        raise UsageError(
            f"{shown}: inside the state directory {state}, which `intake down` removes: "
            "write the export somewhere else"
        )
    if target.is_dir():
        raise UsageError(f"{shown}: is a directory; give the name of a new file")
    if target.exists() or target.is_symlink():
        raise UsageError(
            f"{shown}: already exists; intake never overwrites a file (it may be an earlier "
            "export): choose a new name"
        )
    if not real.parent.is_dir():
        raise UsageError(f"{shown}: the directory {real.parent} does not exist")
    return real


def _close_queues(conn: psycopg.Connection, settings: Settings) -> tuple[tuple[str, ...], int, int]:
    """Lock the queue and DLQ against writes until the transaction ends; count them.

    No claim lands and no drain takes an intent between this count, the
    export and the teardown: what is exported or refused is all there is.
    """
    names = queue.queue_names(conn)
    present = tuple(n for n in (settings.queue_name, settings.dlq_name) if n in names)
    conn.execute(f"set local lock_timeout = '{QUEUE_LOCK_TIMEOUT}'")
    try:
        for name in present:
            conn.execute(
                sql.SQL("lock table {} in exclusive mode").format(
                    sql.Identifier("pgmq", f"q_{name}")
                )
            )
    except psycopg.errors.LockNotAvailable:
        raise RefusedTeardown(
            f"DB1's queues stayed busy for {QUEUE_LOCK_TIMEOUT}: stop the drain workers "
            "and run `intake down` again (nothing was torn down)"
        ) from None
    depth = {name: queue.metrics(conn, name).queue_length for name in present}
    return present, depth.get(settings.queue_name, 0), depth.get(settings.dlq_name, 0)


def _export(conn: psycopg.Connection, queue_names: tuple[str, ...], target: Path) -> int:
    """Write every message still queued or dead-lettered, one JSON object per line,
    then prove it: synced to disk and read back, the same messages in the same order.

    A failure removes the partial file; the intents are still in DB1.
    """
    written: list[tuple[str, int]] = []
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"--export {target}: cannot create it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for name in queue_names:
                # The message as DB1's JSON text: psycopg's own reader would
                # raise on one too deep or with a number too long, and stop
                # the export (and so the teardown) for one foreign message.
                query = sql.SQL(
                    "select msg_id, read_ct, enqueued_at, message::text from {} order by msg_id"
                ).format(sql.Identifier("pgmq", f"q_{name}"))
                for msg_id, read_ct, enqueued_at, text in conn.execute(query):
                    record = {
                        "queue": name,
                        "msg_id": msg_id,
                        "read_ct": read_ct,
                        "enqueued_at": enqueued_at.isoformat(),
                    }
                    message, unreadable = read_json(text)
                    if unreadable:
                        # Kept whole, as a string of JSON text, so every line still reads back.
                        record["message_text"] = text
                    else:
                        record["message"] = message
                    out.write(json.dumps(record, sort_keys=True) + "\n")
                    written.append((name, msg_id))
            out.flush()
            os.fsync(out.fileno())
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        _verify_export(target, written)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise ExportFailed(
            f"writing the export {target} failed ({exc.strerror}): nothing was torn down"
        ) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return len(written)


def _verify_export(target: Path, written: list[tuple[str, int]]) -> None:
    read: list[tuple[str, int]] = []
    with target.open(encoding="utf-8") as back:
        for number, line in enumerate(back, start=1):
            try:
                record = json.loads(line)
                read.append((record["queue"], record["msg_id"]))
            except (ValueError, KeyError, TypeError):
                raise ExportFailed(
                    f"the export {target} does not read back (line {number} is not an "
                    "intent): nothing was torn down"
                ) from None
    if read != written:
        raise ExportFailed(
            f"the export {target} reads back {len(read)} intents where {len(written)} were "
            "written: nothing was torn down"
        )


@dataclass
class DownReport:
    exported: int | None
    undrained: int
    dead: int
    stopped_embedded: bool
    export_path: str | None = None
    # What the state directory held that intake did not make: left alone.
    left_in_state_dir: list[str] = field(default_factory=list)


def down(settings: Settings, *, force: bool = False, export: Path | None = None) -> DownReport:
    """Tear the event down, refusing while intents would be lost.

    With `export`, every queued and dead-lettered intent is written, synced
    and read back before anything is torn down. The queues stay locked
    against writes from the count to the teardown.
    """
    target = _export_target(settings, export) if export is not None else None
    embedded = settings.db1.embedded or settings.db2.embedded
    clusters = EmbeddedClusters(settings.state_dir, settings.embedded)
    report = DownReport(None, 0, 0, stopped_embedded=False)
    with clusters.locked(create=False) if embedded else nullcontext(True):
        if embedded and not clusters.load():
            return report
        where = endpoints(settings)
        with connect(where.db1, "DB1", autocommit=False) as conn:
            if schema.is_provisioned(conn):
                present, report.undrained, report.dead = _close_queues(conn, settings)
                if target is not None:
                    report.exported = _export(conn, present, target)
                    report.export_path = str(target)
                elif (report.undrained or report.dead) and not force:
                    raise RefusedTeardown(
                        f"{report.undrained} intents are still queued and {report.dead} are "
                        "dead-lettered. Drain them (`intake drain`), export them "
                        "(`intake down --export FILE`), or discard them (`intake down --force`)"
                    )
                if not settings.db1.embedded:
                    telemetry.unschedule(conn)
                    for name in (settings.queue_name, settings.dlq_name):
                        queue.drop_queue(conn, name)
                    conn.execute("drop function if exists public.claim_resource(text)")
                    conn.execute("drop schema if exists intake cascade")
            if settings.db1.embedded:
                # Stopped while this session still holds the queues: nothing
                # lands in them after the count (the stop ends the session).
                report.left_in_state_dir = clusters.stop()
                report.stopped_embedded = True
                conn.close()
            else:
                conn.commit()
        if where.embedded and not report.stopped_embedded:
            report.left_in_state_dir = clusters.stop()
            report.stopped_embedded = True
    return report


def failover(settings: Settings, *, how: standby.StopHow, lose_host: bool) -> standby.Promotion:
    """Lose the embedded DB1 and promote its standby, to see failover before trusting it.

    Only the embedded DB1 with `embedded.standby: true`: a configured DB1 is
    promoted by its own HA (Patroni, the managed service), docs/failover.md.
    """
    if not settings.db1.embedded:
        raise UsageError(
            "intake failover tries failover on the embedded DB1 only; a configured DB1 is "
            "promoted by its own HA tool (Patroni, the managed service): see docs/failover.md"
        )
    if not settings.embedded.standby:
        raise UsageError(
            "intake failover needs a standby: set embedded.standby: true in intake.yaml "
            "and run `intake up`"
        )
    clusters = EmbeddedClusters(settings.state_dir)
    if standby.STANDBY not in clusters.load():
        raise UsageError(
            f"no standby of DB1 under {settings.state_dir}: run `intake up` (a promotion "
            "uses it up; the next `intake up` makes a new one)"
        )
    return standby.promote(clusters, how=how, lose_host=lose_host)
