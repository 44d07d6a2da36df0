"""A fair opening: buyers who arrive before `opens_at` are admitted in a random order.

Arriving early buys nothing: everyone in the waiting room when it closes is
admitted in a uniformly random order (Python's `random.Random(seed).shuffle`
of the buyers in arrival order), and only then do later arrivals claim, first
come first served.

DB1 keeps the promise, not a face: joining the room and closing it take one
advisory lock (shared to join, exclusive to close), so a receipt is never
handed out after the room was counted; the claim functions refuse every
claim in the pool until the admission is complete, whichever door a buyer
used; and the room is closed by DB1's clock. The seed, the room's size and
its last arrival are stored before anyone is admitted, so `verify` replays
the opening from DB1's tables alone, and an opener that dies midway is
continued by the next one in the same order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from intake_cli.engine import claims
from intake_cli.platform.sqlfiles import queries

log = logging.getLogger(__name__)

# How often an opener that arrived early asks DB1 whether its clock says it is time.
CLOSE_POLL_S = 1.0


@dataclass(frozen=True)
class Joined:
    """A buyer's answer at the room's door."""

    # waiting (in the room, with a receipt) | opened (claim instead) |
    # unknown_pool | invalid_user
    outcome: str
    receipt: UUID | None = None
    arrival_no: int | None = None


@dataclass(frozen=True)
class Place:
    """Where one buyer of the room stands."""

    receipt: UUID
    arrival_no: int
    admitted_no: int | None
    outcome: str | None


def order(users_by_arrival: list[str], seed: int) -> list[str]:
    """The admission order of an opening: the auditor's replay."""
    shuffled = list(users_by_arrival)
    random.Random(seed).shuffle(shuffled)
    return shuffled


async def join(conn: psycopg.AsyncConnection, pool_id: str, user_id: str) -> Joined:
    async with conn.transaction():
        cur = await conn.execute(
            queries("opening")["join"], {"pool_id": pool_id, "user_id": user_id}
        )
        row = await cur.fetchone()
    assert row is not None
    return Joined(*row)


async def place(conn: psycopg.AsyncConnection, pool_id: str, user_id: str) -> Place | None:
    async with conn.transaction():
        cur = await conn.execute(
            queries("opening")["place"], {"pool_id": pool_id, "user_id": user_id}
        )
        row = await cur.fetchone()
    return Place(*row) if row else None


async def open_pool(
    pool: AsyncConnectionPool,
    pool_id: str,
    admit_per_second: int = 0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Close the room and admit it (or see that another process did). Returns once done.

    The admitter holds a transaction-scoped advisory lock on one connection
    for the whole admission; every other process's opener waits on it. Each
    chunk is admitted in its own transaction on a second connection, so a
    crash loses nothing already answered.
    """
    q = queries("opening")
    async with pool.connection() as guard, guard.transaction():
        await guard.execute(q["lock"], {"pool_id": pool_id})
        async with pool.connection() as work:
            while True:
                async with work.transaction():
                    cur = await work.execute(
                        q["close"], {"pool_id": pool_id, "seed": secrets.randbits(62)}
                    )
                    seed, waiting, last_arrival_no, completed, opens_in_s = await cur.fetchone()  # type: ignore[misc]
                if seed is not None:
                    break
                await sleep(min(CLOSE_POLL_S, opens_in_s))
            if completed:
                return
            async with work.transaction():
                cur = await work.execute(
                    q["room"], {"pool_id": pool_id, "last_arrival_no": last_arrival_no}
                )
                rows = await cur.fetchall()
            if len(rows) != waiting:  # the room is closed: nobody can have joined since
                raise RuntimeError(f"pool {pool_id}: {len(rows)} in the room, {waiting} recorded")
            # The seed is the audit trail: logged as well as stored.
            log.warning("opening pool %s: %d waiting, seed %d", pool_id, waiting, seed)
            shuffled = order([user for user, _ in rows], seed)
            places = {user: n for n, user in enumerate(shuffled)}
            admitted = {user for user, number in rows if number is not None}
            chunk = min(claims.MAX_BATCH, admit_per_second or claims.MAX_BATCH)
            for start in range(0, len(shuffled), chunk):
                users = [u for u in shuffled[start : start + chunk] if u not in admitted]
                if users:
                    async with work.transaction():
                        await work.execute(
                            q["admit"],
                            {
                                "pool_id": pool_id,
                                "user_ids": users,
                                "places": [places[u] for u in users],
                            },
                        )
                if admit_per_second:
                    await sleep(chunk / admit_per_second)
            async with work.transaction():
                await work.execute(q["complete"], {"pool_id": pool_id})


@dataclass
class Verdict:
    """An auditor's replay of one pool's opening from DB1's tables."""

    pool_id: str
    opens_at: datetime | None = None
    seed: int | None = None
    waiting: int | None = None
    opened_at: datetime | None = None
    completed_at: datetime | None = None
    admitted: int = 0
    # Each is a sentence an operator reads; none means the opening kept its promise.
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.completed_at is not None and not self.problems

    def as_json(self) -> dict[str, Any]:
        def instant(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "pool_id": self.pool_id,
            "holds": self.holds,
            "opens_at": instant(self.opens_at),
            "seed": self.seed,
            "waiting": self.waiting,
            "admitted": self.admitted,
            "opened_at": instant(self.opened_at),
            "completed_at": instant(self.completed_at),
            "problems": self.problems,
        }


class NoSuchPool(LookupError):
    pass


def verify(conn: psycopg.Connection, pool_id: str) -> Verdict:
    """Replay a pool's opening from DB1 alone and say whether it kept its promise.

    Every receipt handed out is in the shuffled set, the set is what was
    stored when the room closed, the stored seed reproduces every admitted
    buyer's place, and no buyer outside the room holds a unit taken before
    the admission was complete.
    """
    q = queries("opening")
    row = conn.execute(q["record"], {"pool_id": pool_id}).fetchone()
    if row is None:
        raise NoSuchPool(pool_id)
    seed, waiting, last_arrival_no, opened_at, completed_at, opens_at = row
    verdict = Verdict(pool_id, opens_at, seed, waiting, opened_at, completed_at)
    if seed is None:
        verdict.problems.append("the opening has not begun: nothing to replay yet")
        return verdict
    ledger = conn.execute(q["ledger"], {"pool_id": pool_id}).fetchall()
    room = [r for r in ledger if last_arrival_no is None or r[1] <= last_arrival_no]
    after = len(ledger) - len(room)
    if after:
        verdict.problems.append(f"{after} receipts were handed out after the room closed")
    if len(room) != waiting:
        verdict.problems.append(f"the room holds {len(room)} buyers; {waiting} were recorded")
    admitted = [r for r in room if r[2] is not None]
    verdict.admitted = len(admitted)
    if completed_at is not None and len(admitted) != len(room):
        verdict.problems.append(
            f"{len(room) - len(admitted)} buyers in the room were never admitted"
        )
    if completed_at is not None and any(r[3] is None for r in admitted):
        verdict.problems.append("an admitted buyer has no recorded answer")
    shuffled = order([r[0] for r in room], seed)
    mismatched = sum(1 for r in admitted if not 0 <= r[2] < len(shuffled) or shuffled[r[2]] != r[0])
    if mismatched:
        verdict.problems.append(
            f"{mismatched} admitted buyers are not where the stored seed places them"
        )
    if completed_at is not None:
        (cut_in,) = conn.execute(  # type: ignore[misc]
            q["cut_in"],
            {
                "pool_id": pool_id,
                "completed_at": completed_at,
                "last_arrival_no": last_arrival_no,
            },
        ).fetchone()
        if cut_in:
            verdict.problems.append(
                f"{cut_in} units are held by buyers outside the room, "
                "taken before the admission was complete"
            )
    return verdict
