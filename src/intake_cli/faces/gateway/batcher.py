"""Micro-batching: buyers arriving one by one, claimed many at a time.

Each pool keeps a list of waiting buyers. The first one to arrive starts a
short timer (max_wait_ms); the list goes to DB1 as one `claim_resources` call
when the timer fires or when it reaches max_batch, whichever is first. While
a call is out, the next buyers gather into the next list, so under load the
batches grow by themselves and the round trip is paid once for many.

`claim_resources` answers every position as `claim_resource` would have for
the users one after another in array order, so each buyer gets exactly the
single claim's answer, a buyer twice in one batch included (the second
position is `already_claimed` with the first one's unit).

A pool whose claims answer `recovering` (its inventory lost in a DB1 crash
or on a promoted standby) is rebuilt from here too, at most once a second
per pool and process: the buyers' door finds the new primary first, and
need not wait for a drain worker's next batch or the minute's maintenance.
Rebuilds of a pool are serialized in DB1; a whole one is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from intake_cli.engine import claims, recovery
from intake_cli.platform.logs import LOGGER_NAME, event

log = logging.getLogger(f"{LOGGER_NAME}.gateway")
# The least time between two rebuild attempts of one pool from one process.
REBUILD_EVERY_S = 1.0


@dataclass
class _Waiting:
    users: list[str] = field(default_factory=list)
    answers: list[asyncio.Future[claims.Claim]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class ClaimBatcher:
    def __init__(self, pool: AsyncConnectionPool, max_batch: int, max_wait_ms: float) -> None:
        self._pool = pool
        self._max_batch = max(1, min(max_batch, claims.MAX_BATCH))
        self._max_wait_s = max_wait_ms / 1000
        self._waiting: dict[str, _Waiting] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._rebuilt_at: dict[str, float] = {}
        self.batches = 0
        self.claims = 0

    async def claim(self, pool_id: str, user_id: str) -> claims.Claim:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[claims.Claim] = loop.create_future()
        waiting = self._waiting.setdefault(pool_id, _Waiting())
        waiting.users.append(user_id)
        waiting.answers.append(answer)
        if len(waiting.users) >= self._max_batch:
            self._send(pool_id)
        elif waiting.timer is None:
            waiting.timer = loop.call_later(self._max_wait_s, self._send, pool_id)
        # Cancelling this wait (a shutdown) cancels `answer` alone: the batch
        # is its own task and skips answers already done, so no shield is needed.
        return await answer

    def _send(self, pool_id: str) -> None:
        waiting = self._waiting.pop(pool_id, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._call(pool_id, waiting))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _call(self, pool_id: str, waiting: _Waiting) -> None:
        try:
            async with self._pool.connection() as conn:
                answers = await claims.claim_batch_async(conn, pool_id, waiting.users)
        except Exception as exc:  # every waiting buyer must hear of it
            for future in waiting.answers:
                if not future.done():
                    future.set_exception(exc)
            return
        self.batches += 1
        self.claims += len(answers)
        for future, answer in zip(waiting.answers, answers, strict=True):
            if not future.done():
                future.set_result(answer)
        if any(answer.outcome == "recovering" for answer in answers):
            await self._rebuild(pool_id)

    async def _rebuild(self, pool_id: str) -> None:
        now = time.monotonic()
        if now - self._rebuilt_at.get(pool_id, -REBUILD_EVERY_S) < REBUILD_EVERY_S:
            return
        self._rebuilt_at[pool_id] = now
        try:
            async with self._pool.connection() as conn:
                rebuilt = await recovery.rebuild_async(conn, pool_id, "gateway")
        except (psycopg.Error, PoolTimeout) as exc:
            # A drain worker or the next buyer's batch tries again.
            event(log, logging.WARNING, "inventory_rebuild_failed", pool_id=pool_id, error=str(exc))
            return
        if rebuilt is not None:
            event(log, logging.WARNING, "inventory_rebuilt", **rebuilt.as_json())

    async def close(self) -> None:
        for pool_id in list(self._waiting):
            self._send(pool_id)
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
