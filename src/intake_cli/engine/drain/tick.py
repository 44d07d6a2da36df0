"""The drain's HTTP tick: one batch on demand, exactly as `intake drain --once` runs it.

A scheduler (pg_cron + pg_net, cron, a cloud scheduler) asks every few
seconds; each ask runs one batch (drain/batch.py) with a context built once
for the process: its connections and webhook client. Two ticks at once never
take the same intent: the read hides what it hands out for the visibility
timeout.

A tick runs as a task of its own, so a caller that gives up (a timeout, a
dropped connection) does not cut it short: it finishes, and on shutdown
whatever is still unfinished is handed back to the queue at once.

The ticker registers itself in the worker registry once and heartbeats
after every tick with its running totals: a scheduler that stops calling
shows up as a silent worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import Counter
from typing import Any

from psycopg_pool import AsyncConnectionPool

from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.batch import one_batch
from intake_cli.engine.drain.context import DrainContext, DrainStats, Heartbeat
from intake_cli.engine.drain.store import PgStore
from intake_cli.engine.drain.webhook import WebhookClient
from intake_cli.platform.config import Settings
from intake_cli.platform.errors import UnknownPool
from intake_cli.platform.pgconn import async_pool

# Connections kept for ticks; ticks beyond this wait for one (pool timeout).
POOL_MAX = 24


class Ticker:
    def __init__(
        self,
        settings: Settings,
        db1_dsn: str,
        db2_dsn: str,
        logger: logging.Logger,
        *,
        webhook_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.db1_dsn = db1_dsn
        self.db2_dsn = db2_dsn
        self.log = logger
        self.webhook_timeout_s = webhook_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:tick-{uuid.uuid4().hex[:6]}"
        self.totals: Counter[str] = Counter()
        self._running: set[asyncio.Task[dict[str, Any]]] = set()
        self._registered = False
        self._webhook: WebhookClient | None = None
        self._ctx: DrainContext | None = None

    async def open(self) -> None:
        # Opened without waiting for a first connection: serve starts while a
        # database is away, and a tick then answers that it is unavailable.
        self.db1 = async_pool(
            self.db1_dsn,
            min_size=0,
            max_size=POOL_MAX,
            open=False,
            timeout=10,
            kwargs={"autocommit": True, "connect_timeout": 5},
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=0,
        )
        self.db2 = ledger.db2_pool(self.db2_dsn, POOL_MAX)
        await self.db1.open(wait=False)
        await self.db2.open(wait=False)
        self._webhook = WebhookClient(timeout_s=self.webhook_timeout_s, max_connections=256)
        await self._webhook.__aenter__()
        pg = PgStore(self.db1, self.db2, queue=self.settings.queue_name, dlq=self.settings.dlq_name)
        self._ctx = DrainContext(self.settings, pg, self._webhook, self.log)
        self.heartbeat = Heartbeat(pg, self.log, self.worker_id, self.totals)

    async def close(self) -> None:
        """Let running ticks finish; after the shutdown timeout they hand their batch back."""
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=self.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._registered:
            await self.heartbeat.beat(stopped=True)
        if self._webhook is not None:
            await self._webhook.__aexit__(None, None, None)
        await self.db1.close()
        await self.db2.close()

    async def tick(self, pool_id: str | None) -> dict[str, Any]:
        """One batch; its counts. Survives the caller's cancellation (shielded task)."""
        task = asyncio.create_task(self._tick(pool_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _tick(self, pool_id: str | None) -> dict[str, Any]:
        assert self._ctx is not None, "Ticker.open() first"
        stats = DrainStats()
        await self._check_pool(self._ctx, pool_id)
        await self._register(self._ctx)
        try:
            await one_batch(self._ctx, stats.counts, pool_id)
        finally:
            self.totals.update(stats.counts)
            await self.heartbeat.beat()
        return {"pool": pool_id, **stats.as_json()}

    async def _check_pool(self, ctx: DrainContext, pool_id: str | None) -> None:
        if pool_id is None:
            return
        known = {row["pool_id"] for row in await ctx.store.pools()}
        if pool_id not in known:
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")

    async def _register(self, ctx: DrainContext) -> None:
        if self._registered:
            return
        await ctx.store.register(self.worker_id, None, 1)
        self._registered = True
