"""Claims on DB1, as a trusted backend makes them (the two-argument entry point)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import args_row, dict_row

from intake_cli.platform.errors import UsageError
from intake_cli.platform.pgconn import open_async
from intake_cli.platform.sqlfiles import queries

# `intake claim` exits with this (EX_TEMPFAIL) when the pool answers
# `recovering`: the inventory is being rebuilt after a DB1 crash; try again.
RECOVERING_EXIT = 75
# The answers that exit with it: nothing is wrong with the claim, only its moment.
TRY_LATER = frozenset({"recovering", "not_open", "opening"})


@dataclass(frozen=True)
class Claim:
    outcome: str
    pool_id: str
    user_id: str | None
    resource_id: UUID | None = None
    unit_no: int | None = None
    idempotency_key: UUID | None = None
    msg_id: int | None = None

    @property
    def holds_unit(self) -> bool:
        return self.outcome in ("claimed", "already_claimed", "limit_reached")

    def answer(self) -> dict[str, Any]:
        """What the buyer is told: every field but the queue's msg_id, the
        UUIDs as they are (orjson writes them as str() does)."""
        return {
            "outcome": self.outcome,
            "pool_id": self.pool_id,
            "user_id": self.user_id,
            "resource_id": self.resource_id,
            "unit_no": self.unit_no,
            "idempotency_key": self.idempotency_key,
        }

    def as_json(self) -> dict[str, Any]:
        body = self.answer()
        body["resource_id"] = str(self.resource_id) if self.resource_id else None
        body["idempotency_key"] = str(self.idempotency_key) if self.idempotency_key else None
        body["msg_id"] = self.msg_id
        return body


def _claim_sql() -> str:
    return queries("db1")["claim"]


def pool_exists(conn: psycopg.Connection, pool_id: str) -> bool:
    return conn.execute(queries("db1")["pool_exists"], {"pool_id": pool_id}).fetchone() is not None


def claim(conn: psycopg.Connection, pool_id: str, user_id: str) -> Claim:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_claim_sql(), {"pool_id": pool_id, "user_id": user_id}).fetchone()
    assert row is not None
    return Claim(**row)


# claim_resources refuses larger batches: every user in one holds an
# advisory lock until commit.
MAX_BATCH = 1000


def claim_batch(conn: psycopg.Connection, pool_id: str, user_ids: list[str]) -> list[Claim]:
    """Claim one unit for each user in one statement; answers in the order of `user_ids`."""
    if len(user_ids) > MAX_BATCH:
        raise UsageError(f"a batch claims for at most {MAX_BATCH} users, got {len(user_ids)}")
    with conn.cursor(row_factory=args_row(Claim)) as cur:
        return cur.execute(
            queries("db1")["claim_batch"], {"pool_id": pool_id, "user_ids": user_ids}
        ).fetchall()


async def claim_batch_async(
    conn: psycopg.AsyncConnection, pool_id: str, user_ids: list[str]
) -> list[Claim]:
    """`claim_batch` on an async connection (the gateway's micro-batches)."""
    if len(user_ids) > MAX_BATCH:
        raise UsageError(f"a batch claims for at most {MAX_BATCH} users, got {len(user_ids)}")
    # The answer's columns in Claim's order (sql/queries/db1.sql): each row
    # becomes a Claim positionally, without a dict in between.
    async with conn.cursor(row_factory=args_row(Claim)) as cur:
        await cur.execute(queries("db1")["claim_batch"], {"pool_id": pool_id, "user_ids": user_ids})
        return await cur.fetchall()


@dataclass(frozen=True)
class BurstReport:
    outcomes: dict[str, int]
    seconds: float
    latencies_ms: list[float]
    # When the pool first answered "sold out", from the herd's start.
    first_sold_out_s: float | None = None

    @property
    def claims_per_sec(self) -> float:
        return sum(self.outcomes.values()) / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def burst(dsn: str, pool_id: str, users: list[str], concurrency: int) -> BurstReport:
    """Claim once for every user, `concurrency` connections at a time (a small herd)."""
    pending: asyncio.Queue[str] = asyncio.Queue()
    for user in users:
        pending.put_nowait(user)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    sold_out_at: list[float] = []
    sql_text = _claim_sql()

    async def buyer() -> None:
        # Buyers reach a hosted DB1 through a transaction-mode pooler:
        # open_async never prepares a statement on the server.
        async with await open_async(dsn) as conn:
            while not pending.empty():
                user = pending.get_nowait()
                started = time.perf_counter()
                cur = await conn.execute(sql_text, {"pool_id": pool_id, "user_id": user})
                row = await cur.fetchone()
                answered = time.perf_counter()
                latencies.append((answered - started) * 1000)
                assert row is not None
                outcomes[row[0]] += 1
                if row[0] == "sold_out" and not sold_out_at:
                    sold_out_at.append(answered - herd_started)

    herd_started = time.perf_counter()
    await asyncio.gather(*(buyer() for _ in range(max(1, min(concurrency, len(users))))))
    return BurstReport(
        dict(outcomes),
        time.perf_counter() - herd_started,
        latencies,
        sold_out_at[0] if sold_out_at else None,
    )
