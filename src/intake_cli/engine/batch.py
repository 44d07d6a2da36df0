"""One batch of the drain, from the read to the archive: the intents it holds,
the webhook's answers recorded as they arrive, the commits into DB2 and the
finishing steps in DB1. `worker.py` owns the loop that reads batches and the
worker's life around it (start-up, heartbeats, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from intake_cli.engine import fence, ledger, phases
from intake_cli.engine.retry import RetryPolicy
from intake_cli.engine.webhook import Verdict
from intake_cli.platform.errors import (
    LedgerContractError,
    LedgerUnavailable,
)
from intake_cli.platform.jsontext import read_json
from intake_cli.platform.logs import event
from intake_cli.platform.sqlfiles import queries

if TYPE_CHECKING:
    from intake_cli.engine.worker import Worker

# A worker serving only some pools hands the others' messages back this long
# (seconds), so they are not re-read in a tight loop.
FOREIGN_POOL_DELAY_S = 2
PAUSED_POOL_DELAY_S = 5
# A pool whose inventory a DB1 crash emptied: its intents cannot be checked
# against their units until the rebuild (the next batch's) has run.
LOST_INVENTORY_DELAY_S = 2
# Intents whose commit the replication fence held back (DB1's standbys lag)
# are handed back for this long, not charged an attempt: "not yet" is not a
# failure of their payment.
FENCED_DELAY_S = 1
# The shortest interval between lease renewals (a third of the visibility timeout).
LEASE_TICK_MIN_S = 0.2

# How the claim path writes an idempotency key or resource id (uuid → jsonb).
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BIGINT_MAX = 2**63 - 1


def drain_query(name: str) -> str:
    """A named query of sql/queries/drain.sql (the worker's and its batches')."""
    return queries("drain")[name]


@dataclass(frozen=True)
class PoolRuntime:
    """A pool's live settings (engine_config) plus its secret (from the environment)."""

    pool_id: str
    paused: bool
    batch_size: int
    visibility_timeout: int
    webhook_url: str
    rpc: ledger.RpcName
    commit_rate_per_sec: int
    retry: RetryPolicy
    secret: str | None


@dataclass
class Intent:
    msg_id: int
    message: dict[str, Any]
    key: str
    pool_id: str
    unit_no: int
    user_id: str
    resource_id: str
    state: str = "queued"
    attempts: int = 0
    webhook_calls: int = 0
    error: str | None = None
    # How long this batch's webhook call for the intent took.
    webhook_ms: float | None = None
    # Checked against DB1 when read: None when the claim path issued this
    # intent and its unit is still its own; LOST while the pool's inventory
    # awaits its rebuild; otherwise why the message is refused.
    refusal: str | None = None


LOST = "inventory lost"


@dataclass
class DrainStats:
    counts: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            **{
                k: self.counts.get(k, 0)
                for k in (
                    "read",
                    "validated",
                    "committed",
                    "rejected",
                    "retried",
                    "dead",
                    "refused",
                    "handed_back",
                    "fenced",
                    "batches",
                )
            },
            **{k: v for k, v in self.counts.items() if k.startswith("log_lines")},
            "seconds": round(elapsed, 3),
            "committed_per_sec": round(self.counts["committed"] / elapsed, 1) if elapsed else 0,
        }

    @staticmethod
    def total(reports: list[dict[str, Any]]) -> dict[str, Any]:
        """Several workers' `as_json` as one: counts added, over the longest-running one."""
        seconds = max((r["seconds"] for r in reports), default=0.0)
        counts: Counter[str] = Counter()
        for report in reports:
            counts.update(
                {k: v for k, v in report.items() if k not in ("seconds", "committed_per_sec")}
            )
        return {
            **counts,
            "seconds": seconds,
            "committed_per_sec": round(counts["committed"] / seconds, 1) if seconds else 0,
        }


def columns(batch: list[Intent], **extra: Any) -> dict[str, Any]:
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


@dataclass(frozen=True)
class RawJson:
    """A message kept as the JSON text DB1 holds, because intake cannot read it as a value."""

    text: str


def as_jsonb(message: Any) -> Jsonb:
    """A message to write back to DB1: a RawJson goes as its own text, unchanged."""
    if isinstance(message, RawJson):
        return Jsonb(message.text, dumps=str)
    return Jsonb(message)


def is_uuid(value: Any) -> bool:
    """Whether `value` is a UUID as the claim path writes one (text, lower case)."""
    return isinstance(value, str) and _UUID.match(value) is not None


def intent_problems(message: dict[str, Any]) -> list[str]:
    """What keeps a JSON object from being an intent as the claim path writes it."""
    problems = []
    for name in ("idempotency_key", "resource_id"):
        if not is_uuid(message.get(name)):
            problems.append(f"{name} is not a UUID")
    for name in ("pool_id", "user_id", "claimed_at"):
        value = message.get(name)
        if not (isinstance(value, str) and value):
            problems.append(f"{name} is not a non-empty string")
    unit_no = message.get("unit_no")
    if isinstance(unit_no, bool) or not isinstance(unit_no, int) or not 0 < unit_no <= _BIGINT_MAX:
        problems.append("unit_no is not a unit number")
    return problems


def parse_message(row: dict[str, Any]) -> Intent | str:
    """An Intent, or the reason the message cannot be one.

    Every field the unit check and DB2 rely on, in the form the claim path
    writes it: nothing that could make the batch's DB1 query fail reaches it.
    The message may come as DB1's JSON text (the worker reads it so, so that
    one unreadable message cannot fail the read of its whole batch).
    """
    message = row["message"]
    if isinstance(message, str):
        message, unreadable = read_json(message)
        if unreadable:
            return f"malformed intent message: {unreadable}"
    if not isinstance(message, dict):
        return "malformed intent message: not a JSON object"
    if problems := intent_problems(message):
        return f"malformed intent message: {'; '.join(problems)}"
    return Intent(
        msg_id=int(row["msg_id"]),
        message=message,
        key=message["idempotency_key"],
        pool_id=message["pool_id"],
        unit_no=message["unit_no"],
        user_id=message["user_id"],
        resource_id=message["resource_id"],
    )


def refusal_of(known: dict[str, Any], intent: Intent) -> str | None:
    """Why DB1's units say this message is not a live intent of the claim path, or None."""
    if not known["inventory_ready"]:
        return LOST
    where = f"unit {intent.unit_no} of pool {intent.pool_id}"
    status = known["unit_status"]
    if status is None:
        return f"not issued by DB1's claim path: {where} does not exist"
    if status not in ("locked", "consumed"):
        return f"not issued by DB1's claim path: {where} is not claimed ({status})"
    if not known["same_key"]:
        return f"not issued by DB1's claim path: {where} is held under another idempotency key"
    if not known["same_user"]:
        return f"not issued by DB1's claim path: {where} is held by another buyer"
    if not known["same_resource"]:
        return f"not issued by DB1's claim path: {where} has another resource_id"
    return None


class _Recorder:
    """Writes webhook answers to DB1 as they arrive.

    A worker killed mid-batch has then lost only the answers still in flight,
    so its successor asks the webhook again for those alone. One write at a
    time: answers that arrive during a write go together in the next one, so
    a fast webhook's batch still takes one or a few round trips, not one per
    intent.
    """

    def __init__(self, write: Callable[[list[Intent]], Awaitable[None]]) -> None:
        self._write = write
        self._waiting: list[Intent] = []
        self._lock = asyncio.Lock()
        # The first failed write. The batch raises it once every webhook call
        # has returned, as when all answers were written together at the end.
        self.error: Exception | None = None

    async def record(self, intent: Intent) -> None:
        """Return once the answer is written (or a write failed: see `error`)."""
        self._waiting.append(intent)
        async with self._lock:
            if not self._waiting or self.error is not None:
                # Written by the caller before us, or DB1 is failing: the
                # unwritten answers are asked for again after the lease.
                return
            answers, self._waiting = self._waiting, []
            try:
                await self._write(answers)
            except Exception as exc:
                self.error = exc


class Batch:
    """The intents of one read, from webhook to archive."""

    def __init__(
        self,
        worker: Worker,
        pools: dict[str, PoolRuntime],
        intents: list[Intent],
        vt: int,
        broken: list[tuple[int, Any, str]] | None = None,
    ) -> None:
        self.w = worker
        self.pools = pools
        self.intents = intents
        self.vt = vt
        self.unfinished = {i.msg_id for i in intents}
        # (msg_id, message, reason, pool_id): never to the webhook or DB2.
        self.refused: list[tuple[int, Any, str, str | None]] = [
            (msg_id, message, reason, None) for msg_id, message, reason in broken or []
        ]
        self.committed: list[Intent] = []
        self.rejected: list[Intent] = []
        self.failed: list[Intent] = []
        self.validated_now: list[Intent] = []
        self.done_already: list[Intent] = []
        self.handed_back: dict[int, list[Intent]] = {}

    def _refuse(self, intent: Intent, reason: str) -> None:
        self.refused.append((intent.msg_id, intent.message, reason, intent.pool_id))
        self.unfinished.discard(intent.msg_id)

    def _log(self, intent: Intent, name: str, level: int = logging.INFO, **fields: Any) -> None:
        event(
            self.w.log,
            level,
            name,
            msg_id=intent.msg_id,
            pool_id=intent.pool_id,
            idempotency_key=intent.key,
            **fields,
        )

    async def process(self) -> None:
        to_validate, to_commit = [], []
        for intent in self.intents:
            pool = self.pools.get(intent.pool_id)
            if pool is None:
                self._refuse(intent, f"pool {intent.pool_id!r} is not provisioned in DB1")
            elif self.w.pool_filter not in (None, intent.pool_id):
                self.handed_back.setdefault(FOREIGN_POOL_DELAY_S, []).append(intent)
            elif pool.paused:
                self.handed_back.setdefault(PAUSED_POOL_DELAY_S, []).append(intent)
            elif intent.refusal == LOST:
                # After a DB1 crash, until the rebuild: no unit to check against.
                self.handed_back.setdefault(LOST_INVENTORY_DELAY_S, []).append(intent)
            elif intent.refusal is not None:
                self._refuse(intent, intent.refusal)
            elif intent.state in ("committed", "rejected", "dead"):
                # Finished before a crash between DB2 and the archive; the
                # commit (if any) is replayed idempotently for committed ones.
                (to_commit if intent.state == "committed" else self.done_already).append(intent)
            elif intent.state == "validated":
                to_commit.append(intent)
            else:
                to_validate.append(intent)

        keeper = asyncio.create_task(self._keep_leases())
        laps: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            laps[f"{name}_ms"] = round((now - clock) * 1000, 1)
            phases.add(name, now - clock)
            clock = now

        try:
            if self.handed_back:
                await self._hand_back()
            if self.refused:
                await self.w.refuse(self.refused)
            if to_validate:
                to_commit += await self._validate(to_validate)
                lap("validate")
            if to_commit:
                await self._commit(to_commit)
                lap("commit")
            await self._finish()
            lap("finish")
            event(
                self.w.log,
                logging.INFO,
                "batch",
                size=len(self.intents),
                committed=len(self.committed),
                rejected=len(self.rejected),
                failed=len(self.failed),
                **laps,
            )
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _set_visibility(self, msg_ids: list[int], delay: int) -> None:
        async with self.w.db1.connection() as conn:
            await conn.execute(
                drain_query("hand_back"),
                {"queue": self.w.queue, "msg_ids": msg_ids, "delay": delay},
            )

    async def _keep_leases(self) -> None:
        """Long webhook calls or a slow commit must not let the lease run out.

        A lapsed lease lets another worker read the same intent and call the
        commit RPC for it again while this one's call still runs: DB2 would
        spend db2.commit_timeout_seconds on one payload twice. So the lease
        is renewed three times per visibility timeout (a 1 s lease too, not
        at the very moment it ends), and one failed renewal is retried at
        the next tick instead of ending the renewals for the whole batch.
        """
        interval = max(LEASE_TICK_MIN_S, self.vt / 3)
        while True:
            await asyncio.sleep(interval)
            if not self.unfinished:
                continue
            try:
                await self._set_visibility(sorted(self.unfinished), self.vt)
            except (psycopg.Error, PoolTimeout) as exc:
                event(self.w.log, logging.WARNING, "lease_not_extended", error=str(exc))
                continue
            event(self.w.log, logging.DEBUG, "lease_extended", count=len(self.unfinished))

    async def _hand_back(self) -> None:
        for delay, intents in self.handed_back.items():
            await self._set_visibility([i.msg_id for i in intents], delay)
            self.unfinished.difference_update(i.msg_id for i in intents)
            self.w.stats.counts["handed_back"] += len(intents)

    async def hand_back_unfinished(self) -> None:
        """Cancelled at shutdown: give what is left back to the queue at once."""
        if not self.unfinished:
            return
        await self._set_visibility(sorted(self.unfinished), 0)
        event(
            self.w.log,
            logging.WARNING,
            "handed_back",
            count=len(self.unfinished),
            reason="shutdown",
        )

    async def _validate(self, intents: list[Intent]) -> list[Intent]:
        recorder = _Recorder(self._record)

        async def ask(intent: Intent) -> None:
            pool = self.pools[intent.pool_id]
            payload = {**intent.message, "state": "queued", "attempt": intent.attempts + 1}
            result = await self.w.webhook.validate(
                pool.webhook_url, payload, intent.key, pool.secret
            )
            intent.webhook_calls += 1
            intent.webhook_ms = round(result.elapsed_s * 1000, 1)
            self._log(
                intent,
                "webhook",
                level=logging.DEBUG,
                status=result.status,
                verdict=result.verdict.value,
                duration_ms=round(result.elapsed_s * 1000, 1),
            )
            if result.verdict is Verdict.VALIDATED:
                intent.state = "validated"
                self.validated_now.append(intent)
                await recorder.record(intent)
            elif result.verdict is Verdict.REJECTED:
                intent.error = result.reason
                self.rejected.append(intent)
                await recorder.record(intent)
            else:
                intent.error = f"webhook: {result.reason}"
                self.failed.append(intent)

        await asyncio.gather(*(ask(i) for i in intents))
        if recorder.error is not None:
            raise recorder.error
        return self.validated_now

    async def _record(self, answers: list[Intent]) -> None:
        """Write webhook answers to DB1: the yeses validated, the noes finished."""
        validated = [i for i in answers if i.state == "validated"]
        rejected = [i for i in answers if i.state != "validated"]
        with phases.clock("db1_mark"):
            async with self.w.db1.connection() as conn:
                # One statement alone is atomic without the BEGIN and COMMIT round trips.
                both = conn.transaction() if validated and rejected else contextlib.nullcontext()
                async with both:
                    if validated:
                        await conn.execute(drain_query("mark_validated"), columns(validated))
                    if rejected:
                        await conn.execute(
                            drain_query("finish_rejected"), columns(rejected, queue=self.w.queue)
                        )
        for intent in validated:
            # Recorded with the validation: a later failure of the commit
            # must not count this call again.
            intent.webhook_calls = 0
            self._log(
                intent,
                "transition",
                from_state="queued",
                to_state="validated",
                duration_ms=intent.webhook_ms,
            )
        for intent in rejected:
            self._log(
                intent,
                "transition",
                from_state="queued",
                to_state="rejected",
                reason=intent.error,
                duration_ms=intent.webhook_ms,
            )
            self.unfinished.discard(intent.msg_id)
        self.w.stats.counts["validated"] += len(validated)
        self.w.stats.counts["rejected"] += len(rejected)

    async def _commit(self, intents: list[Intent]) -> None:
        if not await self._cross_fence(intents):
            return
        by_pool: dict[str, list[Intent]] = {}
        for intent in intents:
            by_pool.setdefault(intent.pool_id, []).append(intent)
        for pool_id, group in by_pool.items():
            pool = self.pools[pool_id]
            try:
                rpc = await self.w.resolve_rpc(pool.rpc)
            except (LedgerUnavailable, PoolTimeout, psycopg.OperationalError) as exc:
                self._fail_all(group, f"DB2 unavailable: {exc}")
                continue
            except LedgerContractError as exc:
                # Changed live to an RPC DB2 lacks: fail the intents (they
                # retry, then dead-letter) rather than the worker.
                self._fail_all(group, str(exc))
                continue
            pending = group
            while pending:
                granted = await self._take_tokens(pool, len(pending))
                chunk, pending = pending[:granted], pending[granted:]
                await self._commit_chunk(rpc, chunk)

    async def _cross_fence(self, intents: list[Intent]) -> bool:
        """Whether DB1's standbys have every intent of this batch (engine/fence.py);
        if they lag past a third of the lease, the intents are handed back."""
        with phases.clock("fence"):
            async with self.w.db1.connection() as conn:
                crossing = await fence.cross(
                    conn, self.w.fence_mode, timeout_s=max(1.0, self.vt / 3)
                )
        if crossing.hidden and not self.w.fence_blind_said:
            self.w.fence_blind_said = True
            event(
                self.w.log,
                logging.WARNING,
                "replication_fence_blind",
                standbys=crossing.hidden,
                hint="grant pg_monitor to intake's DB1 role so the drain can see its standbys",
            )
        if crossing.passed:
            return True
        event(
            self.w.log,
            logging.WARNING,
            "replication_fence_held",
            intents=len(intents),
            waited_s=round(crossing.waited_s, 3),
            retry_in_s=FENCED_DELAY_S,
        )
        await self._set_visibility([i.msg_id for i in intents], FENCED_DELAY_S)
        self.unfinished.difference_update(i.msg_id for i in intents)
        self.w.stats.counts["fenced"] += len(intents)
        return False

    async def _take_tokens(self, pool: PoolRuntime, wanted: int) -> int:
        if pool.commit_rate_per_sec <= 0:
            return wanted
        with phases.clock("commit_tokens"):
            return await self._wait_for_tokens(pool, wanted)

    async def _wait_for_tokens(self, pool: PoolRuntime, wanted: int) -> int:
        while True:
            async with self.w.db1.connection() as conn:
                cur = await conn.execute(
                    drain_query("take_commit_tokens"), {"pool_id": pool.pool_id, "wanted": wanted}
                )
                row = await cur.fetchone()
            granted = int(row[0]) if row else 0
            if granted:
                return granted
            await asyncio.sleep(min(0.2, max(0.005, 1 / pool.commit_rate_per_sec)))

    async def _commit_chunk(self, rpc: ledger.RpcName, chunk: list[Intent]) -> None:
        payloads = [{**i.message, "state": "validated"} for i in chunk]
        started = time.perf_counter()
        try:
            async with self.w.db2.connection() as conn:
                outcomes = await ledger.commit_batch(
                    conn, rpc, payloads, timeout_s=self.w.settings.db2.commit_timeout_seconds
                )
        except (LedgerUnavailable, PoolTimeout, psycopg.OperationalError) as exc:
            self._fail_all(chunk, f"DB2 unavailable: {exc}".strip())
            return
        phases.add("db2_commit", time.perf_counter() - started)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        for intent, outcome in zip(chunk, outcomes, strict=True):
            if outcome.ok:
                self.committed.append(intent)
                self._log(
                    intent,
                    "transition",
                    from_state="validated",
                    to_state="committed",
                    duration_ms=elapsed_ms,
                )
            else:
                intent.error = f"commit RPC: {outcome.error}"
                self.failed.append(intent)

    def _fail_all(self, intents: list[Intent], reason: str) -> None:
        for intent in intents:
            intent.error = reason
            self.failed.append(intent)

    async def _finish(self) -> None:
        retries, dead = [], []
        for intent in self.failed:
            pool = self.pools.get(intent.pool_id)
            policy = pool.retry if pool else RetryPolicy(max_retries=0)
            decision = policy.decide(intent.attempts)
            intent.attempts = decision.attempts
            (dead if decision.dead else retries).append((intent, decision.delay_s))
        if not (self.committed or retries or dead or self.done_already):
            return
        q = self.w.queue
        steps = sum(map(bool, (self.committed, self.done_already, retries, dead)))
        async with self.w.db1.connection() as conn:
            # One statement alone is atomic without the BEGIN and COMMIT round
            # trips (the usual batch: only commits), and holds no transaction
            # open while the worker's loop is busy elsewhere.
            together = conn.transaction() if steps > 1 else contextlib.nullcontext()
            async with together:
                if self.committed:
                    await conn.execute(
                        drain_query("finish_committed"), columns(self.committed, queue=q)
                    )
                if self.done_already:
                    await conn.execute(
                        drain_query("archive_many"), columns(self.done_already, queue=q)
                    )
                if retries:
                    r = [i for i, _ in retries]
                    await conn.execute(
                        drain_query("schedule_retries"),
                        columns(r, queue=q, delays=[delay for _, delay in retries]),
                    )
                if dead:
                    d = [i for i, _ in dead]
                    await conn.execute(
                        drain_query("dead_letter"),
                        columns(d, queue=q, dlq=self.w.dlq, intents=[Jsonb(i.message) for i in d]),
                    )
        self.unfinished.clear()
        counts = self.w.stats.counts
        counts["committed"] += len(self.committed)
        counts["retried"] += len(retries)
        counts["dead"] += len(dead)
        outcomes = [
            ("retry_scheduled", logging.WARNING, retries),
            ("dead_lettered", logging.ERROR, dead),
        ]
        for name, level, decided in outcomes:
            for intent, delay in decided:
                self._log(
                    intent,
                    name,
                    level=level,
                    state=intent.state,
                    attempts=intent.attempts,
                    delay_s=delay,
                    error=intent.error,
                )
