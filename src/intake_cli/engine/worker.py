"""`intake drain`: read a batch, validate with the webhook, commit to DB2, archive.

One batch goes through three steps, each costing one round trip per database
whatever the batch size (recording the webhook's answers: one per group of
answers that arrive together):

1. read up to batch_size messages (intake.read_intents: like pgmq.read,
   leased for visibility_timeout, oldest vt first)
   and load what DB1 knows of their intents (intent_state) and of their units:
   only an intent that DB1's claim path issued and that still holds its unit
   (the same key, buyer and resource id on a locked or consumed unit) goes
   on; any other message is refused into the DLQ, never shown to the webhook
   or DB2;
2. call the webhook for every intent not yet validated, concurrently; record
   each answer as it arrives (answers that come together share a round trip),
   the yeses before any commit so a crash cannot make us ask twice, the noes
   with the unit released and the message archived;
3. commit every validated intent through the DB2 RPC (rate-limited across the
   fleet, each statement bounded by db2.commit_timeout_seconds), then consume
   the units and archive the messages, for the intents whose commit the RPC's
   answer proves; failures are counted and retried with backoff via set_vt,
   or dead-lettered.

Several such loops run at once (--concurrency), so one batch's webhook calls
overlap another's commits.

A worker started while DB1 or DB2 is unreachable waits for them (backoff with
jitter, one log line per try) and drains once both answer; only a
configuration error (DB1 not provisioned, an unknown pool, a commit RPC DB2
lacks) stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from intake_cli.engine import fence, ledger, phases, recovery, telemetry
from intake_cli.engine.batch import (
    Batch,
    DrainStats,
    PoolRuntime,
    RawJson,
    as_jsonb,
    drain_query,
    parse_message,
    refusal_of,
)
from intake_cli.engine.retry import RetryPolicy
from intake_cli.engine.webhook import WebhookClient
from intake_cli.platform.config import Settings
from intake_cli.platform.db import (
    CONNECT_TIMEOUT_S,
    DB1,
    IN_RECOVERY,
    describe_dsn,
    first_line,
    standby_refusal,
)
from intake_cli.platform.errors import (
    ConnectionFailed,
    DatabaseUnreachable,
    LedgerUnavailable,
    NotProvisioned,
    UnknownPool,
)
from intake_cli.platform.logs import LogDrain, event
from intake_cli.platform.pgconn import async_pool, open_async
from intake_cli.platform.signals import stop_on_signals
from intake_cli.platform.sqlfiles import queries

# Waiting for a database at start: the first try again after about half a
# second, then twice as long each time (plus up to a second of jitter, so a
# fleet restarted together does not knock in step), at most this long.
DB_WAIT_FIRST_S = 0.5
DB_WAIT_MAX_S = 10
# While DB1 is away, how often a worker asks whether its primary is back, and
# how long one such connection attempt may take.
DB1_PROBE_S = 0.25
DB1_PROBE_CONNECT_S = 2
# A failed inventory rebuild is tried again after this, doubling up to the max.
REBUILD_RETRY_FIRST_S = 1.0
REBUILD_RETRY_MAX_S = 30.0


@contextlib.asynccontextmanager
async def _connect(dsn: str, label: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """A direct connection for the start-up checks; losing the server is DatabaseUnreachable."""
    try:
        conn = await open_async(dsn, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            label, f"cannot connect to {label} ({describe_dsn(dsn)}): {first_line(exc)}"
        ) from None
    except psycopg.ProgrammingError as exc:
        # A malformed DSN will not get better by waiting.
        raise ConnectionFailed(f"{label}: invalid connection string: {exc}") from None
    async with conn:
        if label == DB1:
            row = await (await conn.execute(IN_RECOVERY)).fetchone()
            if row and row[0]:
                # It may be promoted, or the multi-host DSN's primary return: wait.
                raise DatabaseUnreachable(label, standby_refusal(dsn))
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, LedgerUnavailable) as exc:
            raise DatabaseUnreachable(label, f"{label}: {first_line(exc)}") from None


class Worker:
    def __init__(
        self,
        settings: Settings,
        db1_dsn: str,
        db2_dsn: str,
        logger: logging.Logger,
        *,
        concurrency: int = 2,
        once: bool = False,
        pool_filter: str | None = None,
        webhook_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 30.0,
        idle_sleep_s: float = 0.25,
        log_drain: LogDrain | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.queue = settings.queue_name
        self.dlq = settings.dlq_name
        self.db1_dsn = db1_dsn
        self.db2_dsn = db2_dsn
        self.log = logger
        self.concurrency = 1 if once else concurrency
        self.once = once
        self.pool_filter = pool_filter
        self.webhook_timeout_s = webhook_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.idle_sleep_s = idle_sleep_s
        self.log_drain = log_drain
        # How long to wait for DB1 and DB2 at start; None: as long as it takes.
        self.connect_timeout_s = connect_timeout_s
        self.stats = DrainStats()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._resolved_rpcs: dict[ledger.RpcName, ledger.RpcName] = {}
        self._secrets = {p.pool_id: p.webhook_secret for p in settings.pools}
        # pool id -> (monotonic time of the next try, the pause after that one)
        self._rebuild_retry: dict[str, tuple[float, float]] = {}
        self._db1_probe: asyncio.Task[None] | None = None
        # The replication fence (engine/fence.py): what to wait for, and
        # whether the worker said once that it cannot see DB1's standbys.
        self.fence_mode: fence.FenceMode = settings.db1.replication_fence  # type: ignore[assignment]
        self.fence_blind_said = False

    def share(
        self,
        db1: AsyncConnectionPool,
        db2: AsyncConnectionPool,
        webhook: WebhookClient,
        resolved_rpcs: dict[ledger.RpcName, ledger.RpcName],
    ) -> None:
        """Borrow open pools and a webhook client, for one batch without a start-up of its own
        (`intake serve`'s tick: the process holds them across ticks)."""
        self.db1, self.db2, self.webhook = db1, db2, webhook
        self._resolved_rpcs = resolved_rpcs

    async def one_batch(self) -> int:
        """One batch on shared resources (see `share`); how many messages it read."""
        return await self._one_batch()

    # -- start and stop ------------------------------------------------------

    def stop(self) -> None:
        if not self._stopping.is_set():
            event(self.log, logging.INFO, "stopping", reason="signal")
        self._stopping.set()

    async def run(self) -> DrainStats:
        with stop_on_signals(asyncio.get_running_loop(), self.stop):
            shipper = asyncio.create_task(self.log_drain.run()) if self.log_drain else None
            try:
                if await self._until_stopped(self._wait_for_databases()):
                    await self._drain()
                # Logged before the log drain's last flush, so the drain receives it too.
                event(self.log, logging.INFO, "stopped", **self.stats.as_json())
            finally:
                await self._close_log_drain(shipper)
        return self.stats

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` unless a signal comes first: False when stopped before it finished."""
        task = asyncio.create_task(work)
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if not self._stopping.is_set():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _drain(self) -> None:
        waited_s = time.monotonic() - self.stats.started
        # Throughput is measured over the draining, not the wait for the databases.
        self.stats.started = time.monotonic()
        phases.enable()
        pool_size = self.concurrency + 2
        self.db1 = async_pool(
            self.db1_dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            # No check on checkout: it would cost a round trip per DB1 call in
            # the batch loop, and a broken connection surfaces as an
            # OperationalError that the slot's retry already handles.
            # Connections that cannot be made are given up at once instead of
            # retried with the pool's doubling backoff: a slot then probes DB1
            # itself (_db1_back) and asks for a connection when it answers.
            reconnect_timeout=0,
        )
        self.db2 = ledger.db2_pool(self.db2_dsn, pool_size)
        # Not waiting for the first connection: DB1 answered a moment ago, and
        # should it go away again the slots' retry rides that out.
        await self.db1.open()
        await self.db2.open()
        heartbeat = asyncio.create_task(self._heartbeat_every(telemetry.HEARTBEAT_S))
        tidier = None if self.once else asyncio.create_task(self._tidy_every(telemetry.TIDY_S))
        event(
            self.log,
            logging.INFO,
            "started",
            concurrency=self.concurrency,
            once=self.once,
            pool=self.pool_filter,
            queue=self.queue,
            waited_s=round(waited_s, 1),
        )
        try:
            async with WebhookClient(
                timeout_s=self.webhook_timeout_s, max_connections=256
            ) as self.webhook:
                slots = [asyncio.create_task(self._slot(n)) for n in range(self.concurrency)]
                await self._wait_for(slots)
        finally:
            for task in (heartbeat, tidier):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._heartbeat(stopped=True)
            await self.db1.close()
            await self.db2.close()

    async def _close_log_drain(self, shipper: asyncio.Task[None] | None) -> None:
        if shipper is None or self.log_drain is None:
            return
        shipper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shipper
        buffer = self.log_drain.buffer
        self.stats.counts["log_lines_shipped"] = buffer.shipped
        self.stats.counts["log_lines_dropped"] = buffer.dropped
        if buffer.dropped or buffer.lines:
            event(
                self.log,
                logging.WARNING,
                "log_drain_lost",
                dropped=buffer.dropped,
                unsent=len(buffer.lines),
                failures=self.log_drain.failures,
            )

    # -- waiting for the databases at start ------------------------------------

    async def _wait_for_databases(self) -> None:
        """Check DB1 and DB2 as the drain needs them, trying again while either is unreachable.

        A configuration error (DB1 not provisioned, an unknown pool, a commit
        RPC that DB2 lacks) is raised at once: waiting would not fix it.
        """
        limit = self.connect_timeout_s
        backoff = wait_exponential_jitter(multiplier=DB_WAIT_FIRST_S, max=DB_WAIT_MAX_S)

        def wait(state: RetryCallState) -> float:
            delay = backoff(state)
            if limit is None:
                return delay
            # The last try comes at the limit, not a backoff past it.
            return min(delay, max(0.0, limit - state.seconds_since_start))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnreachable),
            wait=wait,
            stop=stop_never if limit is None else stop_after_delay(limit),
            before_sleep=self._log_waiting,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._check_databases()
        except DatabaseUnreachable as exc:
            raise ConnectionFailed(
                f"{exc} (gave up after waiting {limit:g} s: --connect-timeout)"
            ) from None

    def _log_waiting(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        label = error.label if isinstance(error, DatabaseUnreachable) else "db"
        event(
            self.log,
            logging.WARNING,
            f"waiting_for_{label.lower()}",
            error=str(error),
            retry_in_s=round(state.next_action.sleep, 1) if state.next_action else None,
            waited_s=round(state.seconds_since_start, 1),
        )

    async def _check_databases(self) -> None:
        """DB1 provisioned with the pools served, DB2 offering their commit RPCs; then register."""
        async with _connect(self.db1_dsn, "DB1") as db1:
            rpcs = await self._served_rpcs(db1)
            async with _connect(self.db2_dsn, "DB2") as db2:
                for rpc in sorted(rpcs, key=str):
                    self._resolved_rpcs[rpc] = await ledger.check_rpc_async(db2, rpc)
            await self._register(db1)

    async def _served_rpcs(self, conn: psycopg.AsyncConnection) -> set[ledger.RpcName]:
        row = await (await conn.execute(queries("db1")["intake_schema_exists"])).fetchone()
        if not (row and row[0]):
            raise NotProvisioned()
        cur = conn.cursor(row_factory=dict_row)
        rows = await (await cur.execute(drain_query("engine_pools"))).fetchall()
        rpcs = {row["pool_id"]: row["commit_rpc_name"] for row in rows}
        if self.pool_filter is not None and self.pool_filter not in rpcs:
            raise UnknownPool(f"pool {self.pool_filter!r} is not provisioned in DB1")
        return {
            ledger.RpcName.parse(name)
            for pool_id, name in rpcs.items()
            if self.pool_filter in (None, pool_id)
        }

    # -- the registry `intake watch` reads ---------------------------------------

    async def _register(self, conn: psycopg.AsyncConnection) -> None:
        await telemetry.register_worker(conn, self.worker_id, self.pool_filter, self.concurrency)

    async def _heartbeat(self, *, stopped: bool = False) -> None:
        counts = self.stats.counts
        try:
            async with self.db1.connection(timeout=5) as conn:
                await conn.execute(
                    telemetry.query("heartbeat"),
                    {
                        "worker_id": self.worker_id,
                        "batches": counts["batches"],
                        "committed": counts["committed"],
                        "rejected": counts["rejected"],
                        "retried": counts["retried"],
                        "dead": counts["dead"],
                        "log_lines_dropped": self.log_drain.buffer.dropped if self.log_drain else 0,
                        "stopped": stopped,
                    },
                )
        except (psycopg.Error, PoolTimeout) as exc:
            # A missed heartbeat shows the worker as silent; that is all.
            event(self.log, logging.WARNING, "heartbeat_failed", error=str(exc))

    async def _heartbeat_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._heartbeat()

    async def _tidy_every(self, seconds: float) -> None:
        """Housekeeping where pg_cron does not do it (telemetry.keep_tidy_unless_scheduled)."""
        while True:
            try:
                async with self.db1.connection(timeout=5) as conn:
                    if await telemetry.keep_tidy_unless_scheduled(conn):
                        event(self.log, logging.DEBUG, "tidied")
            except (psycopg.Error, PoolTimeout) as exc:
                # Housekeeping can wait for the next tick; the drain must not.
                event(self.log, logging.WARNING, "tidy_failed", error=first_line(exc))
            await asyncio.sleep(seconds)

    async def _wait_for(self, slots: list[asyncio.Task[None]]) -> None:
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([*slots, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception():
                    self._stopping.set()
            if not all(task.done() for task in slots):
                # Stopping: in-flight batches get time to finish; what is left
                # after that is handed back to the queue by the batch itself.
                _, pending = await asyncio.wait(slots, timeout=self.shutdown_timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for task in slots:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop_wait.cancel()

    async def _slot(self, number: int) -> None:
        while not self._stopping.is_set():
            try:
                handled = await self._one_batch()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                event(self.log, logging.WARNING, "db1_unavailable", slot=number, error=str(exc))
                await self._db1_back()
                continue
            if self.once:
                return
            if not handled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.idle_sleep_s)

    async def _db1_back(self) -> None:
        """Return once DB1's primary answers again (or the worker stops).

        DB1 is probed with a fresh connection every DB1_PROBE_S, never waited
        for through the pool, whose reconnect backoff doubles without a cap:
        after a failover (a promoted standby, found through a multi-host DSN)
        the batch loop, and with it the rebuild that puts the pool back on
        sale, resumes within a probe of the new primary answering. Every
        slot shares one prober.
        """
        if self._db1_probe is None or self._db1_probe.done():
            self._db1_probe = asyncio.create_task(self._probe_db1())
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([self._db1_probe, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()

    async def _probe_db1(self) -> None:
        said_standby = False
        while not self._stopping.is_set():
            try:
                async with await open_async(
                    self.db1_dsn, connect_timeout=DB1_PROBE_CONNECT_S
                ) as conn:
                    row = await (await conn.execute(IN_RECOVERY)).fetchone()
                if row and not row[0]:
                    # Idle connections to the lost server go now, not one batch at a time.
                    await self.db1.check()
                    event(self.log, logging.INFO, "db1_back")
                    return
                if not said_standby:
                    event(
                        self.log,
                        logging.WARNING,
                        "db1_is_standby",
                        error=standby_refusal(self.db1_dsn),
                    )
                    said_standby = True
            except psycopg.Error:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), DB1_PROBE_S)

    # -- one batch -------------------------------------------------------------

    async def _load_pools(self, conn: psycopg.AsyncConnection) -> dict[str, PoolRuntime]:
        cur = conn.cursor(row_factory=dict_row)
        rows = await (await cur.execute(drain_query("engine_pools"))).fetchall()
        pools = {}
        for row in rows:
            pools[row["pool_id"]] = PoolRuntime(
                pool_id=row["pool_id"],
                paused=row["paused"],
                batch_size=row["batch_size"],
                visibility_timeout=row["visibility_timeout"],
                webhook_url=row["validation_webhook_url"],
                rpc=ledger.RpcName.parse(row["commit_rpc_name"]),
                commit_rate_per_sec=row["commit_rate_per_sec"],
                retry=RetryPolicy(
                    base_s=row["retry_base_seconds"],
                    cap_s=row["retry_max_seconds"],
                    max_retries=row["max_retries"],
                ),
                secret=self._secrets.get(row["pool_id"]),
            )
            if row["inventory_lost"]:
                # Rebuilt or not, the pool stays served: until its inventory
                # is whole, each of its intents is handed back (LOST), never
                # refused as unknown.
                await self._rebuild(conn, row["pool_id"])
        return pools

    async def _rebuild(self, conn: psycopg.AsyncConnection, pool_id: str) -> bool:
        """A DB1 crash (or a promotion) emptied this pool's inventory: rebuild it
        before draining on; whether it is whole now.

        Every worker that sees the loss tries; rebuilds of one pool are
        serialized in DB1 and the later ones find it whole and do nothing. A
        rebuild that fails is logged and tried again, after a growing pause,
        while the worker drains the other pools: it never stops the worker.
        """
        now = time.monotonic()
        retry_at, pause = self._rebuild_retry.get(pool_id, (now, REBUILD_RETRY_FIRST_S))
        if now < retry_at:
            return False
        event(self.log, logging.WARNING, "inventory_lost", pool_id=pool_id)
        try:
            rebuilt = await recovery.rebuild_async(conn, pool_id, "drain")
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise  # DB1 itself went away: the worker's reconnect path
            event(
                self.log,
                logging.ERROR,
                "inventory_rebuild_failed",
                pool_id=pool_id,
                error=first_line(exc),
                retry_in_s=pause,
            )
            self._rebuild_retry[pool_id] = (now + pause, min(pause * 2, REBUILD_RETRY_MAX_S))
            return False
        self._rebuild_retry.pop(pool_id, None)
        if rebuilt is not None:
            event(self.log, logging.WARNING, "inventory_rebuilt", **rebuilt.as_json())
        return True

    async def _one_batch(self) -> int:
        read_started = time.perf_counter()
        async with self.db1.connection() as conn:
            pools = await self._load_pools(conn)
            served = [p for p in pools.values() if self.pool_filter in (None, p.pool_id)]
            if not served:
                return 0
            qty = max(p.batch_size for p in served)
            vt = max(p.visibility_timeout for p in served)
            cur = conn.cursor(row_factory=dict_row)
            # Messages come as DB1's JSON text, read one by one by parse_message:
            # a message Python's JSON reader cannot take (too deep, a number too
            # long) is refused alone instead of failing the read of its batch.
            cur.adapters.register_loader("jsonb", TextLoader)
            rows = await (await cur.execute(drain_query("read"), {"vt": vt, "qty": qty})).fetchall()
            if not rows:
                return 0
            self.stats.counts["read"] += len(rows)
            self.stats.counts["batches"] += 1
            intents, broken = [], []
            for row in rows:
                parsed = parse_message(row)
                if isinstance(parsed, str):
                    # Kept as its text: the dead letter holds it exactly as it came.
                    broken.append((row["msg_id"], RawJson(row["message"]), parsed))
                else:
                    intents.append(parsed)
            states = await (
                await conn.cursor(row_factory=dict_row).execute(
                    drain_query("intent_states"),
                    {
                        "keys": [i.key for i in intents],
                        "pool_ids": [i.pool_id for i in intents],
                        "unit_nos": [i.unit_no for i in intents],
                        "user_ids": [i.user_id for i in intents],
                        "resource_ids": [i.resource_id for i in intents],
                    },
                )
            ).fetchall()
        for intent, known in zip(intents, states, strict=True):
            if known["state"] is not None:
                intent.state = known["state"]
                intent.attempts = known["attempts"]
            if intent.state not in ("rejected", "dead"):
                intent.refusal = refusal_of(known, intent)
            elif known["state_msg_id"] != intent.msg_id:
                # Finished (its unit may be on sale again) as another message:
                # this one is a copy. The same message read twice is archived.
                intent.refusal = (
                    f"not issued by DB1's claim path: intent {intent.key} was already "
                    f"{intent.state} as message {known['state_msg_id']}"
                )

        phases.add("read", time.perf_counter() - read_started)
        batch = Batch(self, pools, intents, vt, broken)
        try:
            await batch.process()
        except asyncio.CancelledError:
            await asyncio.shield(batch.hand_back_unfinished())
            raise
        return len(rows)

    async def refuse(self, refused: list[tuple[int, Any, str, str | None]]) -> None:
        """Messages that are not live intents of DB1's claim path: into the DLQ, marked refused.

        Each is (msg_id, message, reason, pool_id). Nothing else changes: no
        intent_state, no unit, and neither the webhook nor DB2 ever sees them.
        """
        async with self.db1.connection() as conn:
            await conn.execute(
                drain_query("refuse"),
                {
                    "queue": self.queue,
                    "dlq": self.dlq,
                    "msg_ids": [msg_id for msg_id, *_ in refused],
                    "messages": [as_jsonb(message) for _, message, *_ in refused],
                    "errors": [reason for _, _, reason, _ in refused],
                },
            )
        for msg_id, _, reason, pool_id in refused:
            event(self.log, logging.ERROR, "refused", msg_id=msg_id, pool_id=pool_id, error=reason)
        self.stats.counts["dead"] += len(refused)
        self.stats.counts["refused"] += len(refused)

    async def resolve_rpc(self, rpc: ledger.RpcName) -> ledger.RpcName:
        """Check a commit RPC against DB2's catalog the first time it is seen.

        The resolved name carries the argument type (jsonb or json) to call it with.
        """
        if rpc not in self._resolved_rpcs:
            async with self.db2.connection() as conn:
                self._resolved_rpcs[rpc] = await ledger.check_rpc_async(conn, rpc)
        return self._resolved_rpcs[rpc]
