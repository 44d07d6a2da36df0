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

from intake_cli.config import PoolSettings
from intake_cli.errors import UsageError
from intake_cli.sqlfiles import queries

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
    "retry_base_seconds",
    "retry_max_seconds",
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


def seeded(conn: psycopg.Connection, pool_id: str) -> tuple[int, int]:
    units, high = conn.execute(_q("seeded_units"), {"pool_id": pool_id}).fetchone()  # type: ignore[misc]
    return int(units), int(high)


def check_inventory(conn: psycopg.Connection, pools: tuple[PoolSettings, ...]) -> None:
    """Refuse, before any change, to shrink a pool below the units it already has."""
    problems = []
    for pool in pools:
        units, _ = seeded(conn, pool.pool_id)
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
            conn.execute(sql.SQL("create unlogged sequence if not exists {}").format(seq))
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


def seed(
    conn: psycopg.Connection,
    pool: PoolSettings,
    on_progress: Callable[[int, int], None] | None = None,
) -> SeedResult:
    """Add the units a pool is missing, in committed chunks (a re-run resumes)."""
    started = time.perf_counter()
    units, high = seeded(conn, pool.pool_id)
    target = pool.inventory
    added = 0
    sequence_passed = False
    if units < target:
        position = conn.execute(_q("sequence_position"), {"pool_id": pool.pool_id}).fetchone()
        # Claims have already been numbered past the old end: new units would
        # never be reached by number, so they go on the release list instead.
        sequence_passed = bool(position and position[0] > high)
    lo = high + 1
    while lo <= target:
        hi = min(lo + SEED_CHUNK - 1, target)
        with conn.transaction():
            conn.execute(_q("seed_units"), {"pool_id": pool.pool_id, "lo": lo, "hi": hi})
            if sequence_passed:
                conn.execute(_q("release_range"), {"pool_id": pool.pool_id, "lo": lo, "hi": hi})
        added += hi - lo + 1
        lo = hi + 1
        if on_progress:
            on_progress(units + added, target)
    if added:
        conn.execute("analyze intake.allocations")
    return SeedResult(pool.pool_id, added, units + added, time.perf_counter() - started)
