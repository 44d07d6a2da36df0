"""What a buyer may know of their own claim: its state, place in line, and wait.

Read for many buyers at once (the gateway's snapshot), never one query per
buyer's request: see docs/gateway.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from intake_cli.platform.sqlfiles import queries

FINAL_STATES = frozenset({"committed", "rejected", "dead"})


@dataclass(frozen=True)
class ClaimView:
    state: str
    unit_no: int | None
    resource_id: UUID | None
    idempotency_key: UUID | None
    # Intents of the pool queued ahead of this one; None once it left the queue.
    ahead: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "unit_no": self.unit_no,
            "resource_id": str(self.resource_id) if self.resource_id else None,
            "idempotency_key": str(self.idempotency_key) if self.idempotency_key else None,
            "position": self.ahead,
        }


@dataclass(frozen=True)
class PoolView:
    claims: dict[str, ClaimView]
    # Commits per second the drain measured last (engine_metrics); None: not measured yet.
    velocity: float | None


def _statement(queue_name: str) -> sql.Composed:
    return sql.SQL(queries("gateway")["claim_views"]).format(
        queue=sql.Identifier("pgmq", f"q_{queue_name}"),
        archive=sql.Identifier("pgmq", f"a_{queue_name}"),
    )


async def read(
    conn: psycopg.AsyncConnection,
    queue_name: str,
    pool_id: str,
    user_ids: list[str],
    with_positions: bool = True,
) -> PoolView:
    """Every listed buyer's latest claim in the pool, in one statement; without
    positions (`ahead` None throughout), the queue is not read."""
    cur = await conn.execute(
        _statement(queue_name),
        {"pool_id": pool_id, "user_ids": user_ids, "with_positions": with_positions},
    )
    rows = await cur.fetchall()
    velocity = rows[0][6] if rows else None
    views = {
        user: ClaimView(state, unit_no, resource_id, key, ahead)
        for user, unit_no, resource_id, key, state, ahead, _ in rows
    }
    return PoolView(views, velocity)
