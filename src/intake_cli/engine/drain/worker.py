"""`intake drain`: batches in a loop (drain/batch.py), and the worker's life around them.

Several loops ("slots") run at once (--concurrency), so one batch's webhook
calls overlap another's commits. Beside them run the heartbeat and, where
pg_cron does not, DB1's housekeeping.

A worker started while DB1 or DB2 is unreachable waits for them (backoff with
jitter, one log line per try) and drains once both answer; only a
configuration error (DB1 not provisioned, an unknown pool, a commit RPC DB2
lacks) stops it at once. DB1 lost while draining: every slot waits for one
prober to find its primary again. SIGINT/SIGTERM: stop reading, let in-flight
batches finish for the shutdown timeout, hand back what is left, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from intake_cli.engine import telemetry
from intake_cli.engine.drain import ledger, store
from intake_cli.engine.drain.batch import one_batch
from intake_cli.engine.drain.context import DrainContext, DrainStats, Heartbeat
from intake_cli.engine.drain.phases import NO_PHASES, Phases
from intake_cli.engine.drain.webhook import WebhookClient
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

# Waiting for a database at start: the first try again after about half a
# second, then twice as long each time (plus up to a second of jitter, so a
# fleet restarted together does not knock in step), at most this long.
DB_WAIT_FIRST_S = 0.5
DB_WAIT_MAX_S = 10
# While DB1 is away, how often a worker asks whether its primary is back, and
# how long one such connection attempt may take.
DB1_PROBE_S = 0.25
DB1_PROBE_CONNECT_S = 2
# CPython's cyclic garbage collector while a worker drains (see `_fewer_collections`).
GC_THRESHOLDS = (50_000, 20, 10)


class _Collections:
    """Which thresholds the collector had before the first draining worker of the process."""

    draining = 0
    before: tuple[int, int, int] = gc.get_threshold()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect cycles less often while draining; the process's own thresholds after.

    At CPython's default (a young collection every 700 new objects), a
    worker spent a third of its CPU in the collector (`intake bench drain`,
    one process, webhook at once). Thousands of webhook calls are in flight
    (concurrency x batch_size), each holding dozens of objects for its whole
    life: nearly every young collection found them alive, moved them to the
    older generations, and so set off full collections that walk every
    object of the process, 80-100 ms each. Reference counting frees nearly
    all of them anyway the moment a call ends; only garbage in cycles waits
    longer now (until 50,000 more objects are alive than after the last
    collection). Nested workers (tests run several in one process) restore
    the thresholds once the last one ends.
    """
    if _Collections.draining == 0:
        _Collections.before = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
    _Collections.draining += 1
    try:
        yield
    finally:
        _Collections.draining -= 1
        if _Collections.draining == 0:
            gc.set_threshold(*_Collections.before)


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
        phases: Phases | None = None,
    ) -> None:
        self.settings = settings
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
        self.phases = phases or NO_PHASES
        self.stats = DrainStats()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        # Commit RPCs as DB2's catalog resolved them at start-up, for the store.
        self._resolved_rpcs: dict[ledger.RpcName, ledger.RpcName] = {}
        self._db1_probe: asyncio.Task[None] | None = None

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
        self.phases.begin()
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
        pg = store.PgStore(
            self.db1,
            self.db2,
            queue=self.settings.queue_name,
            dlq=self.settings.dlq_name,
            rpcs=self._resolved_rpcs,
        )
        self.heartbeat = Heartbeat(
            pg,
            self.log,
            self.worker_id,
            self.stats.counts,
            lambda: self.log_drain.buffer.dropped if self.log_drain else 0,
        )
        beating = asyncio.create_task(self.heartbeat.every(telemetry.HEARTBEAT_S))
        tidier = None if self.once else asyncio.create_task(self._tidy_every(pg, telemetry.TIDY_S))
        event(
            self.log,
            logging.INFO,
            "started",
            concurrency=self.concurrency,
            once=self.once,
            pool=self.pool_filter,
            queue=self.settings.queue_name,
            waited_s=round(waited_s, 1),
        )
        try:
            async with WebhookClient(
                timeout_s=self.webhook_timeout_s, max_connections=256
            ) as webhook:
                ctx = DrainContext(self.settings, pg, webhook, self.log, phases=self.phases)
                slots = [asyncio.create_task(self._slot(ctx, n)) for n in range(self.concurrency)]
                with _fewer_collections():
                    await self._wait_for(slots)
        finally:
            for task in (beating, tidier):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.heartbeat.beat(stopped=True)
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
            # Set: tenacity asks for a wait only once an attempt has its outcome.
            waited = state.seconds_since_start
            assert waited is not None
            # The last try comes at the limit, not a backoff past it.
            return min(delay, max(0.0, limit - waited))

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
        waited = state.seconds_since_start
        event(
            self.log,
            logging.WARNING,
            f"waiting_for_{label.lower()}",
            error=str(error),
            retry_in_s=round(state.next_action.sleep, 1) if state.next_action else None,
            waited_s=round(waited, 1) if waited is not None else None,
        )

    async def _check_databases(self) -> None:
        """DB1 provisioned with the pools served, DB2 offering their commit RPCs; then register."""
        async with _connect(self.db1_dsn, "DB1") as db1:
            rpcs = await self._served_rpcs(db1)
            async with _connect(self.db2_dsn, "DB2") as db2:
                for rpc in sorted(rpcs, key=str):
                    self._resolved_rpcs[rpc] = await ledger.check_rpc_async(db2, rpc)
            await telemetry.register_worker(db1, self.worker_id, self.pool_filter, self.concurrency)

    async def _served_rpcs(self, conn: psycopg.AsyncConnection) -> set[ledger.RpcName]:
        if not await store.provisioned(conn):
            raise NotProvisioned()
        rpcs = {row["pool_id"]: row["commit_rpc_name"] for row in await store.pool_rows(conn)}
        if self.pool_filter is not None and self.pool_filter not in rpcs:
            raise UnknownPool(f"pool {self.pool_filter!r} is not provisioned in DB1")
        return {
            ledger.RpcName.parse(name)
            for pool_id, name in rpcs.items()
            if self.pool_filter in (None, pool_id)
        }

    # -- beside the batches ------------------------------------------------------

    async def _tidy_every(self, pg: store.PgStore, seconds: float) -> None:
        """Housekeeping where pg_cron does not do it (telemetry.keep_tidy_unless_scheduled)."""
        while True:
            try:
                if await pg.tidy():
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

    # -- the batches -------------------------------------------------------------

    async def _slot(self, ctx: DrainContext, number: int) -> None:
        while not self._stopping.is_set():
            try:
                handled = await one_batch(ctx, self.stats.counts, self.pool_filter)
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
