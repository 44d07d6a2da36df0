"""Pools in DB1: engine_config rows that match intake.yaml, and their inventory.

`intake up` makes engine_config say what the configuration says (the pause
switch excepted: that is an operator's live decision) and seeds the units a
pool does not have yet. It never removes units: lowering a pool's inventory
below what was seeded is refused before anything changes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from intake_cli.engine import recovery
from intake_cli.platform.config import PoolSettings
from intake_cli.platform.errors import UsageError
from intake_cli.platform.sqlfiles import queries

SEED_CHUNK = 100_000

# The engine_config columns that intake.yaml owns.
CONFIG_FIELDS = (
    "inventory",
    "per_user_limit",
    "batch_size",
    "visibility_timeout",
    "validation_webhook_url",
    "commit_rpc_name",
    "max_retries",
    "commit_rate_per_sec",
    "webhook_rate_per_sec",
    "retry_base_seconds",
    "retry_max_seconds",
    # Claims are refused before the pool's fair opening is complete, in DB1.
    "opens_at",
)


@dataclass(frozen=True)
class PoolChange:
    pool_id: str
    action: str  # created | updated | unchanged
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeedResult:
    pool_id: str
    added: int
    total: int
    seconds: float
    # Set when the pool's inventory had been lost in a DB1 crash and was
    # rebuilt from the durable facts instead of seeded.
    recovered: recovery.Rebuild | None = None


def _q(name: str) -> str:
    return queries("db1")[name]


def _config_row(pool: PoolSettings) -> dict[str, object]:
    row = {key: value for key, value in asdict(pool).items() if key in CONFIG_FIELDS}
    row["pool_id"] = pool.pool_id
    return row


def sequence_name(pool_id: str) -> str:
    # Derived from a hash, not the pool id, so the name is always a plain
    # identifier whatever characters a pool id may use.
    return f"units_{hashlib.sha1(pool_id.encode()).hexdigest()[:16]}"


def existing(conn: psycopg.Connection) -> dict[str, dict[str, object]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {row["pool_id"]: row for row in cur.execute(_q("pool_configs"))}


def seeded(conn: psycopg.Connection, pool_id: str) -> int:
    """How many units the pool has been built with; logged, so a crash does not reset it."""
    row = conn.execute(_q("seeded_units"), {"pool_id": pool_id}).fetchone()
    return int(row[0]) if row else 0


def check_inventory(conn: psycopg.Connection, pools: tuple[PoolSettings, ...]) -> None:
    """Refuse, before any change, to shrink a pool below the units it already has."""
    problems = []
    for pool in pools:
        units = seeded(conn, pool.pool_id)
        if pool.inventory < units:
            problems.append(
                f"pool {pool.pool_id}: inventory {pool.inventory} is below the {units} units "
                "already seeded; intake never removes units (use `intake down` to start over)"
            )
    if problems:
        raise UsageError("\n".join(problems))


def reconcile(conn: psycopg.Connection, pools: tuple[PoolSettings, ...]) -> list[PoolChange]:
    """Make engine_config match the configuration; call inside the schema transaction."""
    current = existing(conn)
    changes = []
    for pool in pools:
        wanted = _config_row(pool)
        have = current.get(pool.pool_id)
        if have is None:
            seq = sql.Identifier("intake", sequence_name(pool.pool_id))
            conn.execute(sql.SQL("create sequence if not exists {}").format(seq))
            conn.execute(_q("insert_pool"), {**wanted, "unit_seq": seq.as_string(conn)})
            changes.append(PoolChange(pool.pool_id, "created"))
            continue
        differing = tuple(key for key in CONFIG_FIELDS if have[key] != wanted[key])
        if differing:
            conn.execute(_q("update_pool"), wanted)
            changes.append(PoolChange(pool.pool_id, "updated", differing))
        else:
            changes.append(PoolChange(pool.pool_id, "unchanged"))
    return changes


def load_listed(conn: psycopg.Connection, pool: PoolSettings, ids: list[str]) -> int:
    """Record a pool's listed unit ids (logged) before any unit is built from them.

    Unit n is the n-th id of the file. Ids already recorded never change: a
    file whose earlier lines were edited is refused. Returns how many ids were new.
    """
    source = conn.execute(_q("pool_source"), {"pool_id": pool.pool_id}).fetchone()
    if source and source[0] == "count" and seeded(conn, pool.pool_id) > 0:
        raise UsageError(
            f"pool {pool.pool_id}: its units were seeded by count; they cannot be listed from "
            f"{pool.inventory_file} now (use `intake down` to start over)"
        )
    with conn.transaction():
        conn.execute(
            "create temp table intake_ids (unit_no bigint primary key, resource_id uuid not null)"
            " on commit drop"
        )
        with conn.cursor().copy("copy intake_ids (unit_no, resource_id) from stdin") as copy:
            for unit_no, resource_id in enumerate(ids, start=1):
                copy.write_row((unit_no, resource_id))
        changed = conn.execute(_q("listed_changes"), {"pool_id": pool.pool_id}).fetchall()
        if changed:
            lines = "; ".join(f"line {n}: {was} is now {now}" for n, was, now in changed)
            raise UsageError(
                f"{pool.inventory_file}: units already listed keep their ids ({lines}); "
                "append new ids at the end instead"
            )
        _, high = conn.execute(_q("listed_units"), {"pool_id": pool.pool_id}).fetchone()  # type: ignore[misc]
        added = conn.execute(_q("add_listed"), {"pool_id": pool.pool_id, "high": high}).rowcount
        conn.execute(_q("mark_listed"), {"pool_id": pool.pool_id})
    return added


def seed(
    conn: psycopg.Connection,
    pool: PoolSettings,
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Give the pool the units it is missing.

    A pool without a whole inventory (new, or emptied by a DB1 crash) is built
    in one transaction from the durable facts (intake.rebuild_inventory): a
    new pool has none, a crashed one gets back exactly what its intents hold,
    and it is never seeded over. A whole pool that grew gets its new units
    in committed chunks (a re-run resumes).
    """
    started = time.perf_counter()
    if not recovery.is_ready(conn, pool.pool_id):
        lost = recovery.is_lost(conn, pool.pool_id)
        built = recovery.rebuild(conn, pool.pool_id, "up" if lost else "seed")
        if built is not None:
            if on_progress:
                on_progress(built.units, pool.inventory)
            return SeedResult(
                pool.pool_id,
                0 if lost else built.units,
                built.units,
                time.perf_counter() - started,
                built if lost else None,
            )
    high = seeded(conn, pool.pool_id)
    target = pool.inventory
    added = 0
    sequence_passed = False
    if high < target:
        position = conn.execute(_q("sequence_position"), {"pool_id": pool.pool_id}).fetchone()
        # Claims have already been numbered past the old end: some new units
        # would never be reached by number, so they all go on the release
        # list instead, and numbering is closed before any of them exists
        # (sequences are not transactional: the claims see it at once).
        sequence_passed = bool(position and position[0] > high)
        if sequence_passed:
            conn.execute(_q("close_numbering"), {"pool_id": pool.pool_id, "target": target})
    lo = high + 1
    while lo <= target:
        hi = min(lo + SEED_CHUNK - 1, target)
        with conn.transaction():
            conn.execute(_q("seed_units"), {"pool_id": pool.pool_id, "lo": lo, "hi": hi})
            conn.execute(_q("record_seeded"), {"pool_id": pool.pool_id, "units": hi})
            if sequence_passed:
                conn.execute(_q("release_range"), {"pool_id": pool.pool_id, "lo": lo, "hi": hi})
        added += hi - lo + 1
        lo = hi + 1
        if on_progress:
            on_progress(high + added, target)
    if added:
        conn.execute("analyze intake.allocations")
    return SeedResult(pool.pool_id, added, high + added, time.perf_counter() - started)
