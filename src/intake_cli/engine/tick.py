"""The drain's HTTP tick: one batch on demand, exactly as `intake drain --once` runs it.

A scheduler (pg_cron + pg_net, cron, a cloud scheduler) asks every few
seconds; each ask runs one `Worker` batch on connections and a webhook
client opened once for the process. Two ticks at once never take the same
intent: pgmq's read hides what it hands out for the visibility timeout.

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

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from intake_cli.engine import ledger, telemetry
from intake_cli.engine.batch import drain_query
from intake_cli.engine.webhook import WebhookClient
from intake_cli.engine.worker import Worker
from intake_cli.platform.config import Settings
from intake_cli.platform.errors import UnknownPool
from intake_cli.platform.logs import event
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
        self._rpcs: dict[ledger.RpcName, ledger.RpcName] = {}
        self._webhook: WebhookClient | None = None

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

    async def close(self) -> None:
        """Let running ticks finish; after the shutdown timeout they hand their batch back."""
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=self.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._registered:
            await self._heartbeat(stopped=True)
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
        assert self._webhook is not None, "Ticker.open() first"
        worker = Worker(
            self.settings,
            self.db1_dsn,
            self.db2_dsn,
            self.log,
            once=True,
            pool_filter=pool_id,
            webhook_timeout_s=self.webhook_timeout_s,
        )
        worker.share(self.db1, self.db2, self._webhook, self._rpcs)
        await self._check_pool(pool_id)
        await self._register()
        try:
            await worker.one_batch()
        finally:
            self.totals.update(worker.stats.counts)
            await self._heartbeat()
        return {"pool": pool_id, **worker.stats.as_json()}

    async def _check_pool(self, pool_id: str | None) -> None:
        if pool_id is None:
            return
        async with self.db1.connection() as conn:
            cur = await conn.execute(drain_query("engine_pools"))
            known = {row[0] for row in await cur.fetchall()}
        if pool_id not in known:
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")

    async def _register(self) -> None:
        if self._registered:
            return
        async with self.db1.connection() as conn:
            await telemetry.register_worker(conn, self.worker_id, None, 1)
        self._registered = True

    async def _heartbeat(self, *, stopped: bool = False) -> None:
        try:
            async with self.db1.connection(timeout=5) as conn:
                await conn.execute(
                    telemetry.query("heartbeat"),
                    {
                        "worker_id": self.worker_id,
                        "batches": self.totals["batches"],
                        "committed": self.totals["committed"],
                        "rejected": self.totals["rejected"],
                        "retried": self.totals["retried"],
                        "dead": self.totals["dead"],
                        "log_lines_dropped": 0,
                        "stopped": stopped,
                    },
                )
        except (psycopg.Error, PoolTimeout) as exc:
            # A missed heartbeat shows the ticker as silent; that is all.
            event(self.log, logging.WARNING, "heartbeat_failed", error=str(exc))
