"""One batch of the drain, from the read to the archive: what it does with each intent.

One batch goes through three steps, each costing one round trip per database
whatever the batch size (recording the webhook's answers: one per group of
answers that arrive together):

1. read up to batch_size messages (leased for visibility_timeout, oldest vt
   first) and what DB1 knows of their intents and units: only an intent
   that DB1's claim path issued and that still holds its unit (the same key,
   buyer and resource id on a locked or consumed unit) goes on; any other
   message is refused into the DLQ, never shown to the webhook or DB2;
2. call the webhook for every intent not yet validated, concurrently; record
   each answer as it arrives (answers that come together share a round trip),
   the yeses before any commit so a crash cannot make us ask twice, the noes
   with the unit released and the message archived;
3. commit every validated intent through the DB2 RPC (rate-limited across the
   fleet, each statement bounded by db2.commit_timeout_seconds), then consume
   the units and archive the messages, for the intents whose commit the RPC's
   answer proves; failures are counted and retried with backoff, or
   dead-lettered.

Every statement goes through the context's store; this module only decides,
so it runs as well against an in-memory store. `worker` runs batches in a
loop, `tick` one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.context import DrainContext
from intake_cli.engine.drain.intents import LOST, Intent, RawJson, Refusal, parse_message
from intake_cli.engine.drain.retry import RetryPolicy
from intake_cli.engine.drain.store import (
    GovernorReport,
    InventoryRebuildFailed,
    PoolRow,
    Retry,
    UnitCheck,
)
from intake_cli.engine.drain.webhook import Verdict, WebhookResult
from intake_cli.platform.errors import LedgerContractError, LedgerUnavailable
from intake_cli.platform.logs import event

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
# Intents whose commit found DB2 out of reach are handed back for this long,
# not charged an attempt: DB2 being down is not a failure of their payment.
DB2_UNAVAILABLE_DELAY_S = 2
# A batch waits for its webhook's governor this long at most; a longer pause
# (a Retry-After, an open breaker) hands the intents back until it ends.
GOVERNOR_HOLD_S = 2.0
# Intents that failed while the provider answered nobody wait this long (the
# breaker's probe interval), not charged an attempt.
OUTAGE_DELAY_S = 2
# A throttled intent without a Retry-After is asked again after this.
THROTTLED_DELAY_S = 1
# The shortest interval between lease renewals (a third of the visibility timeout).
LEASE_TICK_MIN_S = 0.2
# A failed inventory rebuild is tried again after this, doubling up to the max.
REBUILD_RETRY_FIRST_S = 1.0
REBUILD_RETRY_MAX_S = 30.0


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
    # Calls to the webhook go through its governor (when not, none of its
    # statements is spent).
    webhook_governed: bool = False

    @classmethod
    def from_row(cls, row: PoolRow, secret: str | None) -> PoolRuntime:
        return cls(
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
            secret=secret,
            webhook_governed=row["webhook_governed"],
        )


def refusal_of(known: UnitCheck, intent: Intent) -> str | None:
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


def take_in(intent: Intent, known: UnitCheck) -> None:
    """What DB1 knows of the intent, onto it: the state it reached, or why it is refused."""
    if known["state"] is not None:
        intent.state = known["state"]
        intent.attempts = known["attempts"] or 0
    if intent.state not in ("rejected", "dead"):
        intent.refusal = refusal_of(known, intent)
    elif known["state_msg_id"] != intent.msg_id:
        # Finished (its unit may be on sale again) as another message:
        # this one is a copy. The same message read twice is archived.
        intent.refusal = (
            f"not issued by DB1's claim path: intent {intent.key} was already "
            f"{intent.state} as message {known['state_msg_id']}"
        )


async def load_pools(ctx: DrainContext) -> dict[str, PoolRuntime]:
    """Every pool's live settings; a pool whose inventory was lost is rebuilt first."""
    pools = {}
    for row in await ctx.store.pools():
        pools[row["pool_id"]] = PoolRuntime.from_row(row, ctx.secrets.get(row["pool_id"]))
        if row["inventory_lost"]:
            # Rebuilt or not, the pool stays served: until its inventory
            # is whole, each of its intents is handed back (LOST), never
            # refused as unknown.
            await rebuild(ctx, row["pool_id"])
    return pools


async def rebuild(ctx: DrainContext, pool_id: str) -> bool:
    """A DB1 crash (or a promotion) emptied this pool's inventory: rebuild it
    before draining on; whether it is whole now.

    Every drain that sees the loss tries; rebuilds of one pool are
    serialized in DB1 and the later ones find it whole and do nothing. A
    rebuild that fails is logged and tried again, after a growing pause,
    while the drain goes on with the other pools: it never stops the worker.
    """
    now = ctx.monotonic()
    retry_at, pause = ctx.rebuild_retry.get(pool_id, (now, REBUILD_RETRY_FIRST_S))
    if now < retry_at:
        return False
    event(ctx.log, logging.WARNING, "inventory_lost", pool_id=pool_id)
    try:
        rebuilt = await ctx.store.rebuild_inventory(pool_id)
    except InventoryRebuildFailed as exc:
        event(
            ctx.log,
            logging.ERROR,
            "inventory_rebuild_failed",
            pool_id=pool_id,
            error=str(exc),
            retry_in_s=pause,
        )
        ctx.rebuild_retry[pool_id] = (now + pause, min(pause * 2, REBUILD_RETRY_MAX_S))
        return False
    ctx.rebuild_retry.pop(pool_id, None)
    if rebuilt is not None:
        event(ctx.log, logging.WARNING, "inventory_rebuilt", **rebuilt.as_json())
    return True


async def one_batch(ctx: DrainContext, counts: Counter[str], pool_filter: str | None = None) -> int:
    """Read one batch and see it through; how many messages it read.

    Cancelled (a shutdown past its timeout), the batch hands what it has not
    finished back to the queue at once rather than after the lease.
    """
    read_started = time.perf_counter()
    pools = await load_pools(ctx)
    served = [p for p in pools.values() if pool_filter in (None, p.pool_id)]
    if not served:
        return 0
    qty = max(p.batch_size for p in served)
    vt = max(p.visibility_timeout for p in served)
    rows = await ctx.store.read(vt, qty)
    if not rows:
        return 0
    counts["read"] += len(rows)
    counts["batches"] += 1
    intents: list[Intent] = []
    refused: list[Refusal] = []
    for row in rows:
        parsed = parse_message(row)
        if isinstance(parsed, str):
            # Kept as its text: the dead letter holds it exactly as it came.
            refused.append(Refusal(row["msg_id"], RawJson(row["message"]), parsed, None))
        else:
            intents.append(parsed)
    for intent, known in zip(intents, await ctx.store.unit_checks(intents), strict=True):
        take_in(intent, known)
    ctx.phases.add("read", time.perf_counter() - read_started)

    batch = Batch(ctx, pools, intents, vt, counts, pool_filter=pool_filter, refused=refused)
    try:
        await batch.process()
    except asyncio.CancelledError:
        await asyncio.shield(batch.hand_back_unfinished())
        raise
    return len(rows)


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
        self._writing = False
        # The first failed write. The batch raises it once every webhook call
        # has returned, as when all answers were written together at the end.
        self.error: Exception | None = None

    async def record(self, intent: Intent) -> None:
        """Have the answer written: at once when no write is under way, else by
        the caller whose write is (it writes until none is left waiting).

        The batch waits for every call, and with them for the last write, so
        only that caller waits here: not one lock wait per answer.
        """
        self._waiting.append(intent)
        if self._writing:
            return
        self._writing = True
        try:
            # Once a write failed (DB1 is failing), the unwritten answers
            # are asked for again after the lease.
            while self._waiting and self.error is None:
                answers, self._waiting = self._waiting, []
                try:
                    await self._write(answers)
                except Exception as exc:
                    self.error = exc
        finally:
            self._writing = False


class Batch:
    """The intents of one read, from webhook to archive."""

    def __init__(
        self,
        ctx: DrainContext,
        pools: dict[str, PoolRuntime],
        intents: list[Intent],
        vt: int,
        counts: Counter[str],
        *,
        pool_filter: str | None = None,
        refused: list[Refusal] | None = None,
    ) -> None:
        self.ctx = ctx
        self.pools = pools
        self.intents = intents
        self.vt = vt
        self.counts = counts
        self.pool_filter = pool_filter
        self.unfinished = {i.msg_id for i in intents}
        # Never to the webhook or DB2.
        self.refused: list[Refusal] = list(refused or [])
        self.committed: list[Intent] = []
        self.rejected: list[Intent] = []
        self.failed: list[Intent] = []
        self.validated_now: list[Intent] = []
        self.done_already: list[Intent] = []
        self.handed_back: dict[int, list[Intent]] = {}

    def _refuse(self, intent: Intent, reason: str) -> None:
        self.refused.append(Refusal(intent.msg_id, intent.message, reason, intent.pool_id))
        self.unfinished.discard(intent.msg_id)

    def _log(self, intent: Intent, name: str, level: int = logging.INFO, **fields: Any) -> None:
        # Called per intent: nothing more is gathered when the level is off.
        if not self.ctx.log.isEnabledFor(level):
            return
        event(
            self.ctx.log,
            level,
            name,
            msg_id=intent.msg_id,
            pool_id=intent.pool_id,
            idempotency_key=intent.key,
            **fields,
        )

    def _sort(self) -> tuple[list[Intent], list[Intent]]:
        """Each intent to its path: (to ask the webhook, to commit); the rest aside."""
        to_validate: list[Intent] = []
        to_commit: list[Intent] = []
        for intent in self.intents:
            pool = self.pools.get(intent.pool_id)
            if pool is None:
                self._refuse(intent, f"pool {intent.pool_id!r} is not provisioned in DB1")
            elif self.pool_filter not in (None, intent.pool_id):
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
        return to_validate, to_commit

    async def process(self) -> None:
        to_validate, to_commit = self._sort()
        keeper = asyncio.create_task(self._keep_leases())
        laps: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            laps[f"{name}_ms"] = round((now - clock) * 1000, 1)
            self.ctx.phases.add(name, now - clock)
            clock = now

        try:
            if self.handed_back:
                await self._hand_back()
            if self.refused:
                await self._refuse_all()
            if to_validate:
                to_commit += await self._validate(to_validate)
                lap("validate")
            if to_commit:
                await self._commit(to_commit)
                lap("commit")
            await self._finish()
            lap("finish")
            event(
                self.ctx.log,
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
            await self.ctx.sleep(interval)
            if not self.unfinished:
                continue
            try:
                await self.ctx.store.hand_back(sorted(self.unfinished), self.vt)
            except (psycopg.Error, PoolTimeout) as exc:
                event(self.ctx.log, logging.WARNING, "lease_not_extended", error=str(exc))
                continue
            event(self.ctx.log, logging.DEBUG, "lease_extended", count=len(self.unfinished))

    async def _hand_back(self) -> None:
        for delay, intents in self.handed_back.items():
            await self.ctx.store.hand_back([i.msg_id for i in intents], delay)
            self.unfinished.difference_update(i.msg_id for i in intents)
            self.counts["handed_back"] += len(intents)

    async def hand_back_unfinished(self) -> None:
        """Cancelled at shutdown: give what is left back to the queue at once."""
        if not self.unfinished:
            return
        await self.ctx.store.hand_back(sorted(self.unfinished), 0)
        event(
            self.ctx.log,
            logging.WARNING,
            "handed_back",
            count=len(self.unfinished),
            reason="shutdown",
        )

    async def _refuse_all(self) -> None:
        await self.ctx.store.refuse(self.refused)
        for refusal in self.refused:
            event(
                self.ctx.log,
                logging.ERROR,
                "refused",
                msg_id=refusal.msg_id,
                pool_id=refusal.pool_id,
                error=refusal.reason,
            )
        self.counts["dead"] += len(self.refused)
        self.counts["refused"] += len(self.refused)

    async def _validate(self, intents: list[Intent]) -> list[Intent]:
        recorder = _Recorder(self._record)
        by_pool: dict[str, list[Intent]] = {}
        for intent in intents:
            by_pool.setdefault(intent.pool_id, []).append(intent)
        await asyncio.gather(
            *(self._validate_pool(self.pools[p], group, recorder) for p, group in by_pool.items())
        )
        if recorder.error is not None:
            raise recorder.error
        return self.validated_now

    async def _validate_pool(
        self, pool: PoolRuntime, intents: list[Intent], recorder: _Recorder
    ) -> None:
        """Ask the pool's webhook about each intent, as fast as its governor allows.

        An ungoverned webhook (no rate set or learned, no pause, breaker
        closed: the usual case) costs no statement; the first 429 or failure
        reported makes the rest of the batch take its calls from the governor.
        """
        governed = pool.webhook_governed
        pending = intents
        while pending:
            probe = False
            if governed:
                grant = await self.ctx.store.take_webhook_calls(pool.pool_id, len(pending))
                if not grant.granted:
                    if grant.wait_s > GOVERNOR_HOLD_S:
                        await self._defer(pending, math.ceil(grant.wait_s), "webhook_governed")
                        return
                    await self.ctx.sleep(max(0.005, grant.wait_s))
                    continue
                now, pending, probe = (
                    pending[: grant.granted],
                    pending[grant.granted :],
                    grant.probe,
                )
            else:
                now, pending = pending, []
            asked_at = self.ctx.monotonic()
            results = await asyncio.gather(*(self._ask(pool, i, recorder) for i in now))
            throttled = [
                i for i, r in zip(now, results, strict=True) if r.verdict is Verdict.THROTTLED
            ]
            failed = [i for i, r in zip(now, results, strict=True) if r.verdict is Verdict.RETRY]
            waits = [r.retry_after_s for r in results if r.retry_after_s is not None]
            answered = len(now) - len(throttled) - len(failed)
            self.ctx.note_answers(pool.pool_id, answered)
            if throttled:
                delay = math.ceil(max(waits)) if waits else THROTTLED_DELAY_S
                said = next(r.reason for r in results if r.verdict is Verdict.THROTTLED)
                await self._defer(throttled, max(1, delay), "webhook_throttled", said)
            if governed or throttled or failed:
                report = await self.ctx.store.report_webhook_calls(
                    pool.pool_id,
                    answered,
                    len(throttled),
                    len(failed),
                    max(waits) if waits else None,
                    self.ctx.answer_rate(pool.pool_id),
                    self.ctx.monotonic() - asked_at,
                )
                self._say_governor(pool, report)
                governed = True
                if failed and (probe or not report.answering):
                    # The provider answers nobody (a probe of the open
                    # breaker included): its outage, not these intents'
                    # failure. They keep their retries.
                    outage = {id(i) for i in failed}
                    self.failed = [i for i in self.failed if id(i) not in outage]
                    await self._defer(failed, OUTAGE_DELAY_S, "webhook_outage", failed[0].error)

    async def _ask(self, pool: PoolRuntime, intent: Intent, recorder: _Recorder) -> WebhookResult:
        payload = {**intent.message, "state": "queued", "attempt": intent.attempts + 1}
        result = await self.ctx.webhook.validate(pool.webhook_url, payload, intent.key, pool.secret)
        intent.webhook_calls += 1
        intent.webhook_ms = round(result.elapsed_s * 1000, 1)
        self._log(
            intent,
            "webhook",
            level=logging.DEBUG,
            status=result.status,
            verdict=result.verdict.value,
            duration_ms=intent.webhook_ms,
        )
        if result.verdict is Verdict.VALIDATED:
            intent.state = "validated"
            self.validated_now.append(intent)
            await recorder.record(intent)
        elif result.verdict is Verdict.REJECTED:
            intent.error = result.reason
            self.rejected.append(intent)
            await recorder.record(intent)
        elif result.verdict is Verdict.RETRY:
            intent.error = f"webhook: {result.reason}"
            self.failed.append(intent)
        return result

    def _say_governor(self, pool: PoolRuntime, report: GovernorReport) -> None:
        """The worker whose report opened or closed the breaker says so, once."""
        if not report.changed:
            return
        opened = report.breaker == "open"
        event(
            self.ctx.log,
            logging.ERROR if opened else logging.WARNING,
            "webhook_breaker_opened" if opened else "webhook_breaker_closed",
            pool_id=pool.pool_id,
            hint=(
                "the payment provider is failing: calls stop but for a probe every 2 s; "
                "intents keep their retries"
                if opened
                else "the provider answered a probe: calls ramp up again"
            ),
        )

    async def _defer(
        self, intents: list[Intent], delay_s: int, reason: str, error: str | None = None
    ) -> None:
        """Hand intents back for `delay_s` without charging them an attempt: being
        told "not now" (a throttle, an outage, DB2 out of reach) is not a failure
        of their payment."""
        await self.ctx.store.hand_back([i.msg_id for i in intents], delay_s)
        self.unfinished.difference_update(i.msg_id for i in intents)
        self.counts["handed_back"] += len(intents)
        self.counts["deferred"] += len(intents)
        event(
            self.ctx.log,
            logging.WARNING,
            "handed_back",
            count=len(intents),
            reason=reason,
            retry_in_s=delay_s,
            error=error,
        )

    async def _record(self, answers: list[Intent]) -> None:
        """Write webhook answers to DB1: the yeses validated, the noes finished."""
        validated = [i for i in answers if i.state == "validated"]
        rejected = [i for i in answers if i.state != "validated"]
        with self.ctx.phases.clock("db1_mark"):
            await self.ctx.store.record_answers(validated, rejected)
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
        self.counts["validated"] += len(validated)
        self.counts["rejected"] += len(rejected)

    async def _commit(self, intents: list[Intent]) -> None:
        if not await self._cross_fence(intents):
            return
        by_pool: dict[str, list[Intent]] = {}
        for intent in intents:
            by_pool.setdefault(intent.pool_id, []).append(intent)
        for pool_id, group in by_pool.items():
            pool = self.pools[pool_id]
            try:
                rpc = await self.ctx.store.resolve_rpc(pool.rpc)
            except (LedgerUnavailable, PoolTimeout, psycopg.OperationalError) as exc:
                await self._defer(
                    group, DB2_UNAVAILABLE_DELAY_S, "db2_unavailable", f"DB2 unavailable: {exc}"
                )
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
        ctx = self.ctx
        with ctx.phases.clock("fence"):
            crossing = await ctx.store.cross_fence(ctx.fence_mode, max(1.0, self.vt / 3))
        if crossing.hidden and not ctx.fence_blind_said:
            ctx.fence_blind_said = True
            event(
                ctx.log,
                logging.WARNING,
                "replication_fence_blind",
                standbys=crossing.hidden,
                hint="grant pg_monitor to intake's DB1 role so the drain can see its standbys",
            )
        if crossing.passed:
            return True
        event(
            ctx.log,
            logging.WARNING,
            "replication_fence_held",
            intents=len(intents),
            waited_s=round(crossing.waited_s, 3),
            retry_in_s=FENCED_DELAY_S,
        )
        await ctx.store.hand_back([i.msg_id for i in intents], FENCED_DELAY_S)
        self.unfinished.difference_update(i.msg_id for i in intents)
        self.counts["fenced"] += len(intents)
        return False

    async def _take_tokens(self, pool: PoolRuntime, wanted: int) -> int:
        if pool.commit_rate_per_sec <= 0:
            return wanted
        with self.ctx.phases.clock("commit_tokens"):
            return await self._wait_for_tokens(pool, wanted)

    async def _wait_for_tokens(self, pool: PoolRuntime, wanted: int) -> int:
        while True:
            granted = await self.ctx.store.take_commit_tokens(pool.pool_id, wanted)
            if granted:
                return granted
            await self.ctx.sleep(min(0.2, max(0.005, 1 / pool.commit_rate_per_sec)))

    async def _commit_chunk(self, rpc: ledger.RpcName, chunk: list[Intent]) -> None:
        payloads = [{**i.message, "state": "validated"} for i in chunk]
        started = time.perf_counter()
        try:
            outcomes = await self.ctx.store.commit(rpc, payloads, self.ctx.commit_timeout_s)
        except (LedgerUnavailable, PoolTimeout, psycopg.OperationalError) as exc:
            await self._defer(
                chunk, DB2_UNAVAILABLE_DELAY_S, "db2_unavailable", f"DB2 unavailable: {exc}".strip()
            )
            return
        self.ctx.phases.add("db2_commit", time.perf_counter() - started)
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
        retries: list[Retry] = []
        dead: list[Retry] = []
        for intent in self.failed:
            pool = self.pools.get(intent.pool_id)
            policy = pool.retry if pool else RetryPolicy(max_retries=0)
            decision = policy.decide(intent.attempts, self.ctx.rng)
            intent.attempts = decision.attempts
            (dead if decision.dead else retries).append(Retry(intent, decision.delay_s))
        if not (self.committed or retries or dead or self.done_already):
            return
        await self.ctx.store.finish(
            self.committed, self.done_already, retries, [d.intent for d in dead]
        )
        self.unfinished.clear()
        self.counts["committed"] += len(self.committed)
        self.counts["retried"] += len(retries)
        self.counts["dead"] += len(dead)
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
