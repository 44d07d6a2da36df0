"""Every statement the drain runs, and nothing that decides.

`DrainStore` is what a batch, a worker and a tick may ask of the databases;
`PgStore` answers on DB1's and DB2's connection pools with the named queries
of sql/queries/drain.sql (and the telemetry, recovery, fence and ledger
functions that own theirs). Unit tests stand an in-memory store in its
place (tests/unit/drain_memory_store.py).

Each batch-sized write takes the batch as parallel arrays, one round trip
whatever its size. Losing DB1 surfaces as psycopg.OperationalError or
PoolTimeout (the worker's slot waits for DB1 then), losing DB2 as
LedgerUnavailable, PoolTimeout or psycopg.OperationalError (the intents'
commits are retried).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypedDict, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.array import ListBinaryDumper
from psycopg.types.json import Jsonb
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool

from intake_cli.engine import fence, recovery, telemetry
from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.intents import Intent, RawJson, Refusal
from intake_cli.platform.db import first_line
from intake_cli.platform.sqlfiles import queries

# Heartbeats and housekeeping wait this long for a DB1 connection, then give
# up until their next turn: they must never hold up a shutdown.
SIDE_TASK_TIMEOUT_S = 5


class PoolRow(TypedDict):
    """A pool's live settings (intake.engine_config), re-read before each batch."""

    pool_id: str
    paused: bool
    batch_size: int
    visibility_timeout: int
    validation_webhook_url: str
    commit_rpc_name: str
    max_retries: int
    commit_rate_per_sec: int
    retry_base_seconds: float
    retry_max_seconds: float
    webhook_rate_per_sec: int
    # A DB1 crash emptied the pool's inventory: to rebuild before its intents
    # can be checked against their units.
    inventory_lost: bool
    # Calls to the pool's webhook go through its governor now (sql/queries/drain.sql).
    webhook_governed: bool


class QueueRow(TypedDict):
    """A message leased by `read`."""

    msg_id: int
    read_ct: int
    enqueued_at: datetime
    vt: datetime
    # DB1's JSON text, read by parse_message: one message Python's JSON reader
    # cannot take (too deep, a number too long) is refused alone instead of
    # failing the read of its batch.
    message: Any


class UnitCheck(TypedDict):
    """What DB1 knows of one intent of a batch: its state and its unit."""

    # None: never recorded (queued, never failed).
    state: str | None
    attempts: int | None
    state_msg_id: int | None
    inventory_ready: bool
    # None: no such unit.
    unit_status: str | None
    same_key: bool | None
    same_user: bool | None
    same_resource: bool | None


class Retry(NamedTuple):
    """A failed intent to try again once its backoff has passed."""

    intent: Intent
    delay_s: int


class WebhookGrant(NamedTuple):
    """Calls the webhook's governor allows now."""

    granted: int
    # When none is granted: seconds until one may be.
    wait_s: float
    # The one call an open breaker lets through to see whether the provider is back.
    probe: bool


class GovernorReport(NamedTuple):
    """The webhook's governor after a worker reported what the provider answered."""

    breaker: str  # closed | open
    # This report opened or closed the breaker.
    changed: bool
    learned_rate: float | None
    paused_until: datetime | None
    # The provider answered some call of the fleet in the last second: a
    # failure now is the intent's own, not an outage's.
    answering: bool = True


class InventoryRebuildFailed(Exception):
    """The inventory rebuild failed while DB1 stayed up; it is tried again later."""


class DrainStore(Protocol):
    """Every operation the drain needs from DB1 and DB2."""

    async def pools(self) -> list[PoolRow]:
        """Every pool's live settings."""

    async def rebuild_inventory(self, pool_id: str) -> recovery.Rebuild | None:
        """Rebuild a pool's lost inventory from the durable facts; None when it was whole.

        Raises InventoryRebuildFailed when the rebuild failed but DB1 did not go away.
        """

    async def read(self, vt: int, qty: int) -> list[QueueRow]:
        """Lease up to `qty` messages for `vt` seconds, the longest visible first."""

    async def unit_checks(self, intents: Sequence[Intent]) -> list[UnitCheck]:
        """Per intent, in order: its state and its unit as DB1 holds them."""

    async def refuse(self, refusals: Sequence[Refusal]) -> None:
        """Move the messages to the DLQ, marked refused; nothing else changes."""

    async def hand_back(self, msg_ids: Sequence[int], delay_s: int) -> None:
        """Hide messages for `delay_s` seconds (0: visible now) without counting an attempt."""

    async def record_answers(self, validated: Sequence[Intent], rejected: Sequence[Intent]) -> None:
        """The webhook's answers: yeses marked validated, noes finished (unit back on sale,
        message archived)."""

    async def cross_fence(self, mode: fence.FenceMode, timeout_s: float) -> fence.Crossing:
        """Wait until DB1's standbys have its WAL as it is now (engine/fence.py)."""

    async def take_commit_tokens(self, pool_id: str, wanted: int) -> int:
        """Commits the pool's fleet-wide rate limit grants now (0: none yet)."""

    async def take_webhook_calls(self, pool_id: str, wanted: int) -> WebhookGrant:
        """Calls to the pool's webhook its fleet-wide governor grants now."""

    async def report_webhook_calls(
        self,
        pool_id: str,
        ok: int,
        throttled: int,
        failed: int,
        retry_after_s: float | None,
        own_ok_per_s: float = 0.0,
        asked_s_ago: float = 0.0,
    ) -> GovernorReport:
        """What the provider answered, for the governor to learn from (with this
        worker's own answers a second, for its first estimate of the limit, and
        how long ago these calls were made, to judge failures in flight together)."""

    async def resolve_rpc(self, rpc: ledger.RpcName) -> ledger.RpcName:
        """The commit RPC as DB2's catalog says to call it (checked once, then remembered)."""

    async def commit(
        self, rpc: ledger.RpcName, payloads: list[dict[str, Any]], timeout_s: float | None
    ) -> list[ledger.CommitOutcome]:
        """Call the commit RPC for every payload (ledger.commit_batch); one outcome each."""

    async def finish(
        self,
        committed: Sequence[Intent],
        archived: Sequence[Intent],
        retries: Sequence[Retry],
        dead: Sequence[Intent],
    ) -> None:
        """A batch's outcomes, all or none: units consumed and messages archived for the
        committed, archived for those finished earlier, retries scheduled, the dead to the DLQ."""

    async def register(self, worker_id: str, pool_filter: str | None, concurrency: int) -> None:
        """Enter a drain in the registry `intake watch` reads."""

    async def heartbeat(
        self, worker_id: str, counts: Mapping[str, int], log_lines_dropped: int, stopped: bool
    ) -> None:
        """A drain is alive (or stopped), with its counts so far."""

    async def tidy(self) -> bool:
        """DB1's housekeeping, unless pg_cron runs it; whether it ran here."""


def drain_query(name: str) -> str:
    """A named query of sql/queries/drain.sql."""
    return queries("drain")[name]


def columns(batch: Sequence[Intent], **extra: Any) -> dict[str, Any]:
    """A batch as the parallel arrays the DB1 batch functions take (one round trip)."""
    return {
        "msg_ids": [i.msg_id for i in batch],
        "keys": [i.key for i in batch],
        "pool_ids": [i.pool_id for i in batch],
        "unit_nos": [i.unit_no for i in batch],
        "states": [i.state for i in batch],
        "attempts": [i.attempts for i in batch],
        "calls": [i.webhook_calls for i in batch],
        "errors": [i.error for i in batch],
        **extra,
    }


def binary_arrays(cur: psycopg.AsyncCursor[Any]) -> psycopg.AsyncCursor[Any]:
    """`cur`, sending lists as binary arrays: for the statements every batch runs.

    As text, psycopg quotes each element in Python: about 3 us per intent
    per statement, where binary copies it as it is (a third of that). Every
    such parameter is cast in its query (`::uuid[]`, `::bigint[]`), so the
    element type psycopg picks for the binary array does not matter.
    """
    cur.adapters.register_dumper(list, ListBinaryDumper)
    return cur


def as_jsonb(message: Any) -> Jsonb:
    """A message to write back to DB1: a RawJson goes as its own text, unchanged."""
    if isinstance(message, RawJson):
        return Jsonb(message.text, dumps=str)
    return Jsonb(message)


# -- on a connection of the caller's: the worker's start-up checks run these on
# direct connections, before its pools exist, to tell a primary from a standby.


async def provisioned(conn: psycopg.AsyncConnection) -> bool:
    """Whether DB1 holds intake's schema."""
    row = await (await conn.execute(queries("db1")["intake_schema_exists"])).fetchone()
    return bool(row and row[0])


async def pool_rows(conn: psycopg.AsyncConnection) -> list[PoolRow]:
    cur = conn.cursor(row_factory=dict_row)
    return cast(list[PoolRow], await (await cur.execute(drain_query("engine_pools"))).fetchall())


class PgStore:
    """DrainStore on DB1's and DB2's pools, opened and closed by their owner."""

    def __init__(
        self,
        db1: AsyncConnectionPool,
        db2: AsyncConnectionPool,
        *,
        queue: str,
        dlq: str,
        rpcs: dict[ledger.RpcName, ledger.RpcName] | None = None,
    ) -> None:
        self.db1 = db1
        self.db2 = db2
        self.queue = queue
        self.dlq = dlq
        # Commit RPCs already checked against DB2's catalog (the worker checks
        # its pools' at start-up); a pool changed live to another is checked
        # the first time one of its batches commits.
        self.rpcs = {} if rpcs is None else rpcs

    async def pools(self) -> list[PoolRow]:
        async with self.db1.connection() as conn:
            return await pool_rows(conn)

    async def rebuild_inventory(self, pool_id: str) -> recovery.Rebuild | None:
        async with self.db1.connection() as conn:
            try:
                return await recovery.rebuild_async(conn, pool_id, "drain")
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    raise  # DB1 itself went away: the worker's reconnect path
                raise InventoryRebuildFailed(first_line(exc)) from exc

    async def read(self, vt: int, qty: int) -> list[QueueRow]:
        async with self.db1.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            cur.adapters.register_loader("jsonb", TextLoader)
            rows = await (await cur.execute(drain_query("read"), {"vt": vt, "qty": qty})).fetchall()
        return cast(list[QueueRow], rows)

    async def unit_checks(self, intents: Sequence[Intent]) -> list[UnitCheck]:
        params = {
            "keys": [i.key for i in intents],
            "pool_ids": [i.pool_id for i in intents],
            "unit_nos": [i.unit_no for i in intents],
            "user_ids": [i.user_id for i in intents],
            "resource_ids": [i.resource_id for i in intents],
        }
        async with self.db1.connection() as conn:
            cur = binary_arrays(conn.cursor(row_factory=dict_row))
            rows = await (await cur.execute(drain_query("intent_states"), params)).fetchall()
        return cast(list[UnitCheck], rows)

    async def refuse(self, refusals: Sequence[Refusal]) -> None:
        async with self.db1.connection() as conn:
            await conn.execute(
                drain_query("refuse"),
                {
                    "queue": self.queue,
                    "dlq": self.dlq,
                    "msg_ids": [r.msg_id for r in refusals],
                    "messages": [as_jsonb(r.message) for r in refusals],
                    "errors": [r.reason for r in refusals],
                },
            )

    async def hand_back(self, msg_ids: Sequence[int], delay_s: int) -> None:
        async with self.db1.connection() as conn:
            await conn.execute(
                drain_query("hand_back"),
                {"queue": self.queue, "msg_ids": list(msg_ids), "delay": delay_s},
            )

    async def record_answers(self, validated: Sequence[Intent], rejected: Sequence[Intent]) -> None:
        async with self.db1.connection() as conn:
            # One statement alone is atomic without the BEGIN and COMMIT round trips.
            both = conn.transaction() if validated and rejected else contextlib.nullcontext()
            async with both:
                if validated:
                    await binary_arrays(conn.cursor()).execute(
                        drain_query("mark_validated"), columns(validated)
                    )
                if rejected:
                    await conn.execute(
                        drain_query("finish_rejected"), columns(rejected, queue=self.queue)
                    )

    async def cross_fence(self, mode: fence.FenceMode, timeout_s: float) -> fence.Crossing:
        async with self.db1.connection() as conn:
            return await fence.cross(conn, mode, timeout_s=timeout_s)

    async def take_commit_tokens(self, pool_id: str, wanted: int) -> int:
        async with self.db1.connection() as conn:
            cur = await conn.execute(
                drain_query("take_commit_tokens"), {"pool_id": pool_id, "wanted": wanted}
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def take_webhook_calls(self, pool_id: str, wanted: int) -> WebhookGrant:
        async with self.db1.connection() as conn:
            cur = await conn.execute(
                drain_query("take_webhook_calls"), {"pool_id": pool_id, "wanted": wanted}
            )
            row = await cur.fetchone()
        return WebhookGrant(*row) if row else WebhookGrant(wanted, 0.0, False)

    async def report_webhook_calls(
        self,
        pool_id: str,
        ok: int,
        throttled: int,
        failed: int,
        retry_after_s: float | None,
        own_ok_per_s: float = 0.0,
        asked_s_ago: float = 0.0,
    ) -> GovernorReport:
        async with self.db1.connection() as conn:
            cur = await conn.execute(
                drain_query("report_webhook_calls"),
                {
                    "pool_id": pool_id,
                    "ok": ok,
                    "throttled": throttled,
                    "failed": failed,
                    "retry_after_s": retry_after_s,
                    "own_ok_per_s": own_ok_per_s,
                    "asked_s_ago": asked_s_ago,
                },
            )
            row = await cur.fetchone()
        return GovernorReport(*row) if row else GovernorReport("closed", False, None, None, True)

    async def resolve_rpc(self, rpc: ledger.RpcName) -> ledger.RpcName:
        if rpc not in self.rpcs:
            async with self.db2.connection() as conn:
                self.rpcs[rpc] = await ledger.check_rpc_async(conn, rpc)
        return self.rpcs[rpc]

    async def commit(
        self, rpc: ledger.RpcName, payloads: list[dict[str, Any]], timeout_s: float | None
    ) -> list[ledger.CommitOutcome]:
        async with self.db2.connection() as conn:
            return await ledger.commit_batch(conn, rpc, payloads, timeout_s=timeout_s)

    async def finish(
        self,
        committed: Sequence[Intent],
        archived: Sequence[Intent],
        retries: Sequence[Retry],
        dead: Sequence[Intent],
    ) -> None:
        q = self.queue
        steps = sum(map(bool, (committed, archived, retries, dead)))
        if not steps:
            return
        async with self.db1.connection() as conn:
            # One statement alone is atomic without the BEGIN and COMMIT round
            # trips (the usual batch: only commits), and holds no transaction
            # open while the worker's loop is busy elsewhere.
            together = conn.transaction() if steps > 1 else contextlib.nullcontext()
            async with together:
                if committed:
                    await binary_arrays(conn.cursor()).execute(
                        drain_query("finish_committed"), columns(committed, queue=q)
                    )
                if archived:
                    await conn.execute(drain_query("archive_many"), columns(archived, queue=q))
                if retries:
                    await conn.execute(
                        drain_query("schedule_retries"),
                        columns(
                            [r.intent for r in retries],
                            queue=q,
                            delays=[r.delay_s for r in retries],
                        ),
                    )
                if dead:
                    await conn.execute(
                        drain_query("dead_letter"),
                        columns(
                            dead, queue=q, dlq=self.dlq, intents=[Jsonb(i.message) for i in dead]
                        ),
                    )

    async def register(self, worker_id: str, pool_filter: str | None, concurrency: int) -> None:
        async with self.db1.connection() as conn:
            await telemetry.register_worker(conn, worker_id, pool_filter, concurrency)

    async def heartbeat(
        self, worker_id: str, counts: Mapping[str, int], log_lines_dropped: int, stopped: bool
    ) -> None:
        async with self.db1.connection(timeout=SIDE_TASK_TIMEOUT_S) as conn:
            await conn.execute(
                telemetry.query("heartbeat"),
                {
                    "worker_id": worker_id,
                    "batches": counts.get("batches", 0),
                    "committed": counts.get("committed", 0),
                    "rejected": counts.get("rejected", 0),
                    "retried": counts.get("retried", 0),
                    "dead": counts.get("dead", 0),
                    "log_lines_dropped": log_lines_dropped,
                    "stopped": stopped,
                },
            )

    async def tidy(self) -> bool:
        async with self.db1.connection(timeout=SIDE_TASK_TIMEOUT_S) as conn:
            return await telemetry.keep_tidy_unless_scheduled(conn)
