"""What a worker and a tick share to run batches, and what they report.

`intake drain`'s worker and `intake serve`'s tick each build one
`DrainContext` for their life (the store on their own pools, their webhook
client) and pass it to every batch; a batch keeps nothing of its caller.
`Heartbeat` is the one way either of them tells the registry it is alive.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg_pool import PoolTimeout

from intake_cli.engine import fence
from intake_cli.engine.drain.phases import NO_PHASES, Phases
from intake_cli.engine.drain.store import DrainStore
from intake_cli.engine.drain.webhook import WebhookResult
from intake_cli.platform.config import Settings
from intake_cli.platform.logs import event


class Validator(Protocol):
    """The webhook as a batch asks it (WebhookClient, or a stand-in in tests)."""

    async def validate(
        self,
        url: str,
        payload: dict[str, Any],
        idempotency_key: str,
        secret: str | None = None,
    ) -> WebhookResult: ...


# How far back a worker counts its own webhook answers.
ANSWER_WINDOW_S = 1.0


@dataclass
class DrainContext:
    """Built once by a worker or a ticker; every batch runs with it."""

    settings: Settings
    store: DrainStore
    webhook: Validator
    log: logging.Logger
    # Off unless the bench asks (drain/phases.py).
    phases: Phases = NO_PHASES
    # Time and chance where a decision depends on them, so tests can stub them.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random | None = None
    # Said once per process: the replication fence cannot see DB1's standbys.
    fence_blind_said: bool = False
    # pool id -> (monotonic time of the next rebuild try, the pause after that one)
    rebuild_retry: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Webhook secrets come from the environment, not DB1: by pool id.
    secrets: dict[str, str | None] = field(init=False)
    # pool id -> (monotonic time, answers) of this process's webhook answers
    # over the last second: the governor's first estimate of a provider's
    # limit, when nothing was reported before its first 429.
    answers: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def note_answers(self, pool_id: str, count: int) -> None:
        now = self.monotonic()
        seen = self.answers.setdefault(pool_id, deque())
        seen.append((now, count))
        while seen and seen[0][0] < now - ANSWER_WINDOW_S:
            seen.popleft()

    def answer_rate(self, pool_id: str) -> float:
        """This process's webhook answers a second, over the last second."""
        seen = self.answers.get(pool_id)
        if not seen:
            return 0.0
        # Over the whole window even when this process is younger: a burst of
        # answers at the start of a provider's window must not read as a rate.
        return sum(count for _, count in seen) / ANSWER_WINDOW_S

    def __post_init__(self) -> None:
        self.secrets = {p.pool_id: p.webhook_secret for p in self.settings.pools}

    @property
    def fence_mode(self) -> fence.FenceMode:
        return self.settings.db1.replication_fence  # type: ignore[return-value]

    @property
    def commit_timeout_s(self) -> float:
        return self.settings.db2.commit_timeout_seconds


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
                    # Handed back without an attempt charged: a throttle, an
                    # outage, DB2 out of reach.
                    "deferred",
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


class Heartbeat:
    """A drain's line in the registry `intake watch` reads: its counts, and that it is alive."""

    def __init__(
        self,
        store: DrainStore,
        log: logging.Logger,
        worker_id: str,
        counts: Mapping[str, int],
        log_lines_dropped: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.log = log
        self.worker_id = worker_id
        self.counts = counts
        self.log_lines_dropped = log_lines_dropped

    async def beat(self, *, stopped: bool = False) -> None:
        try:
            await self.store.heartbeat(
                self.worker_id, self.counts, self.log_lines_dropped(), stopped
            )
        except (psycopg.Error, PoolTimeout) as exc:
            # A missed heartbeat shows the drain as silent; that is all.
            event(self.log, logging.WARNING, "heartbeat_failed", error=str(exc))

    async def every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.beat()
