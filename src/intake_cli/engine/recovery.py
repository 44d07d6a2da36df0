"""A DB1 crash empties the inventory; this module tells and rebuilds it.

The inventory (allocations, released_units) is UNLOGGED: fast for the
herd, gone after a crash or on a promoted standby. Everything needed to rebuild it
exactly is logged: the queue, its archive, the DLQ, intent_state and the
pools' configuration. `intake.rebuild_inventory` (sql/templates/db1/
recovery.sql.j2) does the work in one transaction; this module is how the
engine calls it: `intake up`, `intake recover`, and every drain worker, which
finds a lost pool on its next batch. The maintenance job does the same where
pg_cron runs, so the sale resumes with nobody at the keyboard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from intake_cli.platform.sqlfiles import queries


def _q(name: str) -> str:
    return queries("db1")[name]


@dataclass(frozen=True)
class Rebuild:
    """What one rebuild found in the durable facts and built."""

    pool_id: str
    trigger: str
    units: int
    locked: int
    consumed: int
    released: int
    high_water: int
    intents: int
    conflicts: int
    seconds: float
    rebuilt_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Rebuild:
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        return cls(**fields)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        data["rebuilt_at"] = self.rebuilt_at.isoformat() if self.rebuilt_at else None
        return data

    def summary(self) -> str:
        return (
            f"rebuilt {self.units:,} units from {self.intents:,} intents in {self.seconds:.2f} s: "
            f"{self.locked:,} held, {self.consumed:,} sold, {self.released:,} back on sale, "
            f"numbering resumes after {self.high_water:,}"
            + (f"; {self.conflicts} conflicting claims" if self.conflicts else "")
        )


@dataclass(frozen=True)
class Plan:
    """What a rebuild would build now (`intake recover --dry-run`)."""

    pool_id: str
    lost: bool
    units: int
    locked: int
    consumed: int
    released: int
    high_water: int
    intents: int
    conflicts: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def lost_pools(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute(_q("lost_pools"))]


def is_lost(conn: psycopg.Connection, pool_id: str) -> bool:
    row = conn.execute(_q("inventory_lost"), {"pool_id": pool_id}).fetchone()
    return bool(row and row[0])


def is_ready(conn: psycopg.Connection, pool_id: str) -> bool:
    row = conn.execute(_q("inventory_ready"), {"pool_id": pool_id}).fetchone()
    return bool(row and row[0])


def rebuild(conn: psycopg.Connection, pool_id: str, trigger: str) -> Rebuild | None:
    """Build the pool's inventory from the durable facts; None if it was whole.

    Commits on its own: the rebuilt inventory and the marker that says it is
    whole become visible to claims together.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            _q("rebuild_inventory"), {"pool_id": pool_id, "trigger": trigger}
        ).fetchone()
    if row is None:
        return None
    # Fresh statistics for the rebuilt table: the drain's batch updates are
    # planned from them (see finish_committed).
    conn.execute("analyze intake.allocations")
    return Rebuild.from_row(row)


async def rebuild_async(
    conn: psycopg.AsyncConnection, pool_id: str, trigger: str
) -> Rebuild | None:
    """`rebuild` for the drain worker's event loop."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_q("rebuild_inventory"), {"pool_id": pool_id, "trigger": trigger})
        row = await cur.fetchone()
    if row is None:
        return None
    await conn.execute("analyze intake.allocations")
    return Rebuild.from_row(row)


def plan(conn: psycopg.Connection, pool_id: str) -> Plan:
    lost = is_lost(conn, pool_id)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_q("inventory_plan"), {"pool_id": pool_id}).fetchone()
    assert row is not None
    return Plan(pool_id=pool_id, lost=lost, **{k: int(v) for k, v in row.items()})


def last_rebuilds(conn: psycopg.Connection) -> dict[str, Rebuild]:
    """Each pool's latest rebuild after a loss."""
    with conn.cursor(row_factory=dict_row) as cur:
        return {row["pool_id"]: Rebuild.from_row(row) for row in cur.execute(_q("last_rebuilds"))}
