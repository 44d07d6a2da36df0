"""The drain's store in memory, a fake clock and a scripted webhook: batches without a database.

`MemoryStore` keeps what DB1's drain functions keep (the queue and its
leases, the archive, the dead-letter queue, intent_state, the units) and
what DB2's commit RPC keeps (one row per idempotency key), with the same
rules as sql/templates/db1/functions.sql.j2, so a test can read the outcome
of a batch the way an operator would. Any operation can be made to fail.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intake_cli.engine import fence, recovery
from intake_cli.engine.drain.context import DrainContext
from intake_cli.engine.drain.intents import Intent, Refusal
from intake_cli.engine.drain.ledger import CommitOutcome, RpcName
from intake_cli.engine.drain.store import (
    GovernorReport,
    InventoryRebuildFailed,
    PoolRow,
    QueueRow,
    Retry,
    UnitCheck,
    WebhookGrant,
)
from intake_cli.engine.drain.webhook import Verdict, WebhookResult, classify
from intake_cli.platform.config import DatabaseSettings, EmbeddedSettings, PoolSettings, Settings

QUEUE = "intents"


class FakeClock:
    """Time that moves only when told: `sleep` waits for `advance` to pass its deadline."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def run(self, work: Awaitable[Any], *, limit_s: float = 3600) -> Any:
        """Run `work`, moving time on to the next sleeper whenever everything waits."""
        task = asyncio.ensure_future(work)
        started = self.now
        while not task.done():
            for _ in range(20):
                await asyncio.sleep(0)
                if task.done():
                    break
            else:
                deadline = self.next_deadline()
                if deadline is None or deadline - started > limit_s:
                    task.cancel()
                    raise AssertionError("the batch waits for something time will not bring")
                self.advance(max(0.0, deadline - self.now))
        return task.result()


@dataclass
class Unit:
    status: str = "available"
    key: str | None = None
    user: str | None = None
    resource: str | None = None


@dataclass
class Message:
    msg_id: int
    # A dict as the claim path writes it, or any JSON text.
    body: Any
    vt: float
    read_ct: int = 0

    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


@dataclass
class State:
    state: str
    msg_id: int
    attempts: int = 0
    webhook_calls: int = 0
    last_error: str | None = None


@dataclass
class MemoryStore:
    """DrainStore in memory."""

    clock: FakeClock
    pool_rows: dict[str, PoolRow] = field(default_factory=dict)
    # Pools whose inventory a DB1 crash emptied (rebuilt by rebuild_inventory).
    lost: set[str] = field(default_factory=set)
    units: dict[tuple[str, int], Unit] = field(default_factory=dict)
    queue: dict[int, Message] = field(default_factory=dict)
    archive: dict[int, Message] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, State] = field(default_factory=dict)
    # DB2: what the commit RPC wrote, by idempotency key, and how often it was called.
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    rpc_calls: list[str] = field(default_factory=list)
    # A payload's key -> why the RPC's answer proves no commit for it.
    commit_refusals: dict[str, str] = field(default_factory=dict)
    fence_crossing: fence.Crossing = field(default_factory=lambda: fence.Crossing(True, 0.0, 0))
    # Grants of the fleet-wide commit rate limit, in turn (then: all that is asked).
    token_grants: list[int] = field(default_factory=list)
    # The webhook governor's grants, in turn (then: all that is asked), and
    # what each report is answered (then: closed, unchanged).
    webhook_grants: list[WebhookGrant] = field(default_factory=list)
    governor_answers: list[GovernorReport] = field(default_factory=list)
    # Every operation, in order: (name, detail).
    calls: list[tuple[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    # operation name -> exceptions to raise, one per call, before it changes anything.
    failures: dict[str, list[BaseException]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- setting the scene -----------------------------------------------------

    def add_pool(self, pool_id: str = "drop", units: int = 10, **settings: Any) -> None:
        self.pool_rows[pool_id] = {
            "pool_id": pool_id,
            "paused": False,
            "batch_size": 100,
            "visibility_timeout": 30,
            "validation_webhook_url": f"http://webhook.test/{pool_id}",
            "commit_rpc_name": "public.finalize_transaction",
            "max_retries": 3,
            "commit_rate_per_sec": 0,
            "retry_base_seconds": 1.0,
            "retry_max_seconds": 60.0,
            "webhook_rate_per_sec": 0,
            "inventory_lost": False,
            "webhook_governed": False,
            **settings,  # type: ignore[typeddict-item]
        }
        for unit_no in range(1, units + 1):
            self.units[(pool_id, unit_no)] = Unit()

    def claim(self, user: str, pool_id: str = "drop") -> str:
        """What DB1's claim path does: lock a free unit, enqueue the intent; its key."""
        unit_no = next(
            n
            for (p, n), u in sorted(self.units.items())
            if p == pool_id and u.status == "available"
        )
        key, resource = str(uuid.uuid4()), str(uuid.uuid4())
        self.units[(pool_id, unit_no)] = Unit("locked", key, user, resource)
        self.send(
            {
                "idempotency_key": key,
                "pool_id": pool_id,
                "user_id": user,
                "resource_id": resource,
                "unit_no": unit_no,
                "claimed_at": "2026-01-01T00:00:00+00:00",
            }
        )
        return key

    def send(self, body: Any) -> int:
        """A message in the queue, whoever wrote it."""
        msg_id = next(self._ids)
        self.queue[msg_id] = Message(msg_id, body, vt=self.clock.now)
        return msg_id

    def fail(self, operation: str, *errors: BaseException) -> None:
        self.failures.setdefault(operation, []).extend(errors)

    def _enter(self, operation: str, detail: Any = None) -> None:
        self.calls.append((operation, detail))
        pending = self.failures.get(operation)
        if pending:
            raise pending.pop(0)

    def ops(self, name: str) -> list[Any]:
        return [detail for operation, detail in self.calls if operation == name]

    def unit_of(self, key: str) -> Unit:
        return next(u for u in self.units.values() if u.key == key)

    def message_of(self, key: str) -> Message | None:
        return next(
            (
                m
                for m in self.queue.values()
                if isinstance(m.body, dict) and m.body.get("idempotency_key") == key
            ),
            None,
        )

    # -- DrainStore --------------------------------------------------------------

    async def pools(self) -> list[PoolRow]:
        self._enter("pools")
        return [
            {**row, "inventory_lost": row["pool_id"] in self.lost}
            for row in self.pool_rows.values()
        ]  # type: ignore[misc]

    async def rebuild_inventory(self, pool_id: str) -> recovery.Rebuild | None:
        self._enter("rebuild_inventory", pool_id)
        self.lost.discard(pool_id)
        return None

    async def read(self, vt: int, qty: int) -> list[QueueRow]:
        self._enter("read", (vt, qty))
        now = self.clock.now
        visible = sorted(
            (m for m in self.queue.values() if m.vt <= now), key=lambda m: (m.vt, m.msg_id)
        )
        rows: list[QueueRow] = []
        for message in visible[:qty]:
            message.vt = now + vt
            message.read_ct += 1
            rows.append(
                {
                    "msg_id": message.msg_id,
                    "read_ct": message.read_ct,
                    "enqueued_at": None,  # type: ignore[typeddict-item]
                    "vt": None,  # type: ignore[typeddict-item]
                    "message": message.text(),
                }
            )
        return rows

    async def unit_checks(self, intents: Sequence[Intent]) -> list[UnitCheck]:
        self._enter("unit_checks", len(intents))
        checks: list[UnitCheck] = []
        for intent in intents:
            state = self.states.get(intent.key)
            unit = self.units.get((intent.pool_id, intent.unit_no))
            ready = intent.pool_id not in self.lost
            if not ready:
                unit = None
            checks.append(
                {
                    "state": state.state if state else None,
                    "attempts": state.attempts if state else None,
                    "state_msg_id": state.msg_id if state else None,
                    "inventory_ready": ready,
                    "unit_status": unit.status if unit else None,
                    "same_key": unit.key == intent.key if unit else None,
                    "same_user": unit.user == intent.user_id if unit else None,
                    "same_resource": unit.resource == intent.resource_id if unit else None,
                }
            )
        return checks

    async def refuse(self, refusals: Sequence[Refusal]) -> None:
        self._enter("refuse", [r.msg_id for r in refusals])
        for refusal in refusals:
            self.dead_letters.append(
                {
                    "intent": refusal.message,
                    "state": "refused",
                    "attempts": 0,
                    "last_error": refusal.reason,
                    "source_msg_id": refusal.msg_id,
                }
            )
            # Deleted, not archived: a refused message never counts as a claim.
            self.queue.pop(refusal.msg_id, None)

    async def hand_back(self, msg_ids: Sequence[int], delay_s: int) -> None:
        self._enter("hand_back", (list(msg_ids), delay_s))
        for msg_id in msg_ids:
            if msg_id in self.queue:
                self.queue[msg_id].vt = self.clock.now + delay_s

    async def record_answers(self, validated: Sequence[Intent], rejected: Sequence[Intent]) -> None:
        self._enter("record_answers", ([i.key for i in validated], [i.key for i in rejected]))
        # A round trip: answers arriving meanwhile wait for the next write.
        await asyncio.sleep(0)
        for intent in validated:
            state = self._state(intent)
            state.state, state.last_error = "validated", None
            state.webhook_calls += intent.webhook_calls
        for intent in rejected:
            unit = self.units[(intent.pool_id, intent.unit_no)]
            if unit.key == intent.key:
                self.units[(intent.pool_id, intent.unit_no)] = Unit()
            state = self._state(intent)
            state.state, state.last_error = "rejected", intent.error
            state.webhook_calls += intent.webhook_calls
            self._archive(intent.msg_id)

    async def cross_fence(self, mode: fence.FenceMode, timeout_s: float) -> fence.Crossing:
        self._enter("cross_fence", (mode, timeout_s))
        return self.fence_crossing

    async def take_commit_tokens(self, pool_id: str, wanted: int) -> int:
        self._enter("take_commit_tokens", wanted)
        return min(wanted, self.token_grants.pop(0)) if self.token_grants else wanted

    async def take_webhook_calls(self, pool_id: str, wanted: int) -> WebhookGrant:
        self._enter("take_webhook_calls", (pool_id, wanted))
        if not self.webhook_grants:
            return WebhookGrant(wanted, 0.0, False)
        grant = self.webhook_grants.pop(0)
        return grant._replace(granted=min(wanted, grant.granted))

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
        self._enter("report_webhook_calls", (pool_id, ok, throttled, failed, retry_after_s))
        if self.governor_answers:
            return self.governor_answers.pop(0)
        return GovernorReport("closed", False, None, None)

    async def resolve_rpc(self, rpc: RpcName) -> RpcName:
        self._enter("resolve_rpc", str(rpc))
        return rpc

    async def commit(
        self, rpc: RpcName, payloads: list[dict[str, Any]], timeout_s: float | None
    ) -> list[CommitOutcome]:
        self._enter("commit", [p["idempotency_key"] for p in payloads])
        outcomes = []
        for payload in payloads:
            key = payload["idempotency_key"]
            self.rpc_calls.append(key)
            if key in self.commit_refusals:
                outcomes.append(CommitOutcome(False, self.commit_refusals[key], None))
                continue
            status = "duplicate" if key in self.ledger else "committed"
            self.ledger.setdefault(key, payload)
            outcomes.append(CommitOutcome(True, None, {"idempotency_key": key, "status": status}))
        return outcomes

    async def finish(
        self,
        committed: Sequence[Intent],
        archived: Sequence[Intent],
        retries: Sequence[Retry],
        dead: Sequence[Intent],
    ) -> None:
        self._enter(
            "finish",
            {
                "committed": [i.key for i in committed],
                "archived": [i.key for i in archived],
                "retries": [(r.intent.key, r.delay_s) for r in retries],
                "dead": [i.key for i in dead],
            },
        )
        for intent in committed:
            state = self._state(intent)
            state.state, state.last_error = "committed", None
            unit = self.units[(intent.pool_id, intent.unit_no)]
            if unit.key == intent.key:
                unit.status = "consumed"
            self._archive(intent.msg_id)
        for intent in archived:
            self._archive(intent.msg_id)
        for intent, delay_s in retries:
            state = self._state(intent)
            state.state, state.attempts, state.last_error = (
                intent.state,
                intent.attempts,
                intent.error,
            )
            state.webhook_calls += intent.webhook_calls
            self.queue[intent.msg_id].vt = self.clock.now + delay_s
        for intent in dead:
            self.dead_letters.append(
                {
                    "intent": intent.message,
                    "state": intent.state,
                    "attempts": intent.attempts,
                    "last_error": intent.error,
                    "source_msg_id": intent.msg_id,
                }
            )
            state = self._state(intent)
            state.state, state.attempts, state.last_error = "dead", intent.attempts, intent.error
            state.webhook_calls += intent.webhook_calls
            self._archive(intent.msg_id)

    async def register(self, worker_id: str, pool_filter: str | None, concurrency: int) -> None:
        self._enter("register", worker_id)
        self.registered.append(worker_id)

    async def heartbeat(
        self, worker_id: str, counts: Mapping[str, int], log_lines_dropped: int, stopped: bool
    ) -> None:
        self._enter("heartbeat", worker_id)
        self.heartbeats.append({"worker_id": worker_id, **counts, "stopped": stopped})

    async def tidy(self) -> bool:
        self._enter("tidy")
        return True

    # -- DB1's bookkeeping ---------------------------------------------------------

    def _state(self, intent: Intent) -> State:
        state = self.states.setdefault(intent.key, State(intent.state, intent.msg_id))
        state.msg_id = intent.msg_id
        return state

    def _archive(self, msg_id: int) -> None:
        message = self.queue.pop(msg_id, None)
        if message is not None:
            self.archive[msg_id] = message


class RebuildFails(MemoryStore):
    """A store whose inventory rebuild fails while DB1 stays up."""

    async def rebuild_inventory(self, pool_id: str) -> recovery.Rebuild | None:
        self._enter("rebuild_inventory", pool_id)
        raise InventoryRebuildFailed("XX000: rebuild went wrong")


# A webhook's answer: an HTTP status, "timeout", or "refused" (nothing listening).
Answer = int | str


@dataclass
class FakeWebhook:
    """The validation webhook, scripted per idempotency key; records every call."""

    default: Answer = 200
    # key -> answers in turn (the last one repeats).
    script: dict[str, list[Answer]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    # Set: every call waits for it (a slow webhook).
    gate: asyncio.Event | None = None
    on_call: Callable[[str], None] | None = None

    async def validate(
        self,
        url: str,
        payload: dict[str, Any],
        idempotency_key: str,
        secret: str | None = None,
    ) -> WebhookResult:
        self.calls.append(
            {"url": url, "payload": payload, "key": idempotency_key, "secret": secret}
        )
        if self.on_call is not None:
            self.on_call(idempotency_key)
        if self.gate is not None:
            await self.gate.wait()
        answers = self.script.get(idempotency_key, [self.default])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == "timeout":
            return WebhookResult(Verdict.RETRY, None, "timeout after 10 s", 10.0)
        if answer == "refused":
            return WebhookResult(Verdict.RETRY, None, "connection refused", 0.001)
        if isinstance(answer, str) and answer.startswith("429 retry-after "):
            wait = float(answer.removeprefix("429 retry-after "))
            return WebhookResult(Verdict.THROTTLED, 429, "HTTP 429", 0.002, wait)
        assert isinstance(answer, int)
        return WebhookResult(classify(answer), answer, f"HTTP {answer}", 0.002)

    def keys(self) -> list[str]:
        return [call["key"] for call in self.calls]


def settings(
    *pools: PoolSettings, fence_mode: str = "all", commit_timeout_s: float = 10.0
) -> Settings:
    return Settings(
        path=Path("intake.yaml"),
        state_dir=Path(".intake"),
        queue_name=QUEUE,
        db1=DatabaseSettings(dsn="postgresql:///db1", replication_fence=fence_mode),
        db2=DatabaseSettings(dsn="postgresql:///db2", commit_timeout_seconds=commit_timeout_s),
        embedded=EmbeddedSettings(),
        pools=pools or (PoolSettings("drop", 10, "http://webhook.test/drop"),),
    )


def context(
    store: MemoryStore,
    webhook: Any,
    *,
    config: Settings | None = None,
    log: logging.Logger | None = None,
    **options: Any,
) -> DrainContext:
    return DrainContext(
        config or settings(),
        store,
        webhook,
        log or logging.getLogger("drain-test"),
        sleep=store.clock.sleep,
        monotonic=store.clock.monotonic,
        **options,
    )
