"""A fair opening: buyers who arrive before `opens_at` are admitted in a random order.

Arriving early buys nothing: everyone in the waiting room at the opening is
admitted in a uniformly random order (Python's `random.Random(seed).shuffle`
of the buyers in arrival order), and only then do later arrivals claim, first
come first served. The seed is stored in `intake.openings` before anyone is
admitted, so `order(...)` replays the opening exactly, and an opener that
dies midway is continued by the next one in the same order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from dataclasses import dataclass
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from intake_cli.engine import claims
from intake_cli.platform.sqlfiles import queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    receipt: UUID
    arrival_no: int


def order(users_by_arrival: list[str], seed: int) -> list[str]:
    """The admission order of an opening: the auditor's replay."""
    shuffled = list(users_by_arrival)
    random.Random(seed).shuffle(shuffled)
    return shuffled


async def wait(conn: psycopg.AsyncConnection, pool_id: str, user_id: str) -> Receipt:
    cur = await conn.execute(queries("opening")["wait"], {"pool_id": pool_id, "user_id": user_id})
    row = await cur.fetchone()
    assert row is not None
    return Receipt(row[0], row[1])


async def open_pool(pool: AsyncConnectionPool, pool_id: str, admit_per_second: int = 0) -> None:
    """Admit the waiting room (or see that another process did). Returns once it is done.

    The opener holds a transaction-scoped advisory lock on one connection for
    the whole admission; every other process's opener waits on that lock, and
    their late arrivals with it. Admissions are committed chunk by chunk on a
    second connection, so a crash loses nothing already answered.
    """
    q = queries("opening")
    async with pool.connection() as guard, guard.transaction():
        await guard.execute(q["lock"], {"pool_id": pool_id})
        cur = await guard.execute(q["opening"], {"pool_id": pool_id})
        found = await cur.fetchone()
        if found is not None and found[2] is not None:
            return
        async with pool.connection() as work:
            if found is None:
                seed = secrets.randbits(62)
                await work.execute(q["begin_opening"], {"pool_id": pool_id, "seed": seed})
            else:
                seed = found[0]
            cur = await work.execute(q["waiting"], {"pool_id": pool_id})
            rows = await cur.fetchall()
            log.warning(
                "opening pool %s: %d waiting, seed %d", pool_id, len(rows), seed
            )  # the seed is the audit trail: logged as well as stored
            admitted = {user for user, number in rows if number is not None}
            shuffled = order([user for user, _ in rows], seed)
            chunk = min(claims.MAX_BATCH, admit_per_second or claims.MAX_BATCH)
            for start in range(0, len(shuffled), chunk):
                users = [u for u in shuffled[start : start + chunk] if u not in admitted]
                if users:
                    await _admit(work, pool_id, users, {u: i for i, u in enumerate(shuffled)})
                if admit_per_second:
                    await asyncio.sleep(chunk / admit_per_second)
            await work.execute(q["complete"], {"pool_id": pool_id})


async def _admit(
    work: psycopg.AsyncConnection, pool_id: str, users: list[str], place: dict[str, int]
) -> None:
    async with work.transaction():
        answers = await claims.claim_batch_async(work, pool_id, users)
        await work.execute(
            queries("opening")["admitted"],
            {
                "pool_id": pool_id,
                "user_ids": users,
                "numbers": [place[u] for u in users],
                "outcomes": [a.outcome for a in answers],
                "units": [a.unit_no for a in answers],
            },
        )
