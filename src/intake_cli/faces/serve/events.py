"""The dashboard's push channel: one reader of engine_metrics, fanned out to every page.

Every open page holds a server-sent event stream (`GET /api/events`). They
all share one `Hub`: a single DB1 connection that asks, four times a second,
when the newest engine_metrics row was written (one index probe). Only when
that changes does the hub read a snapshot, the same reading `intake watch
--once --json` prints (`faces/watch.read`), serialise it once, and hand the
same bytes to every subscriber. Ten browsers cost what one costs.

The webhook governors are read apart, once a second: a Retry-After or an
open breaker lasts seconds, less than a collection's interval. Their state
goes out as a `webhook` event only when it differs from what the pages
last received; while a pause or an open breaker is in force, once a second,
so that a page opened then counts down from a fresh figure.

No LISTEN: DB1 may sit behind a transaction-mode pooler, where a session
does not survive the transaction. Where no pg_cron job collects, the hub
collects while pages are open, exactly as `intake watch` does in a
terminal; with no page open it holds no connection and reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from aiohttp import web

from intake_cli.engine import telemetry
from intake_cli.engine.schema import is_provisioned
from intake_cli.faces import watch
from intake_cli.platform.config import Settings
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.errors import IntakeError, NotProvisioned
from intake_cli.platform.logs import LOGGER_NAME, event

# serve's structured log: one JSON line per event, like the audit lines.
log = logging.getLogger(f"{LOGGER_NAME}.dashboard")

POLL_S = 0.25
# A comment line now and then: proxies keep the stream open, and a page
# whose stream went silent for longer knows it is gone and reconnects.
KEEPALIVE_S = 15.0
RETRY_S = 2.0
# A page that stops reading falls behind by at most this many messages;
# older ones are dropped for it (never for the others).
BACKLOG = 32
# The countdowns a page shows are whole seconds: a fresher read would show nothing new.
WEBHOOK_POLL_S = 1.0


def sse(name: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event. json.dumps escapes newlines, so `data` is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def payload(snap: watch.Snapshot) -> dict[str, Any]:
    """What a page receives: watch's JSON untouched, plus when its newest row was written."""
    collected = [p["collected_at"] for p in snap.pools if p.get("collected_at") is not None]
    newest: datetime | None = max(collected, default=None)
    return {
        "snapshot": snap.as_json(),
        "collected_at": newest.isoformat() if newest else None,
        "stale_after_s": telemetry.STALE_AFTER_S,
        "silent_after_s": telemetry.SILENT_AFTER_S,
    }


def webhook_payload(governors: dict[str, telemetry.WebhookGovernor]) -> dict[str, Any]:
    """A `webhook` event: every pool's governor, by pool id (the page updates its rows)."""
    return {"pools": {pool_id: g.as_json() for pool_id, g in governors.items()}}


def _webhook_key(payload: dict[str, Any]) -> str:
    """What makes a `webhook` event worth sending: the state, without the countdowns,
    unless one is running (then its whole second counts, so one goes out a second)."""
    kept = {}
    for pool_id, webhook in payload["pools"].items():
        running = webhook["retry_after_until"] is not None or webhook["breaker"] == "open"
        kept[pool_id] = {
            **webhook,
            "retry_after_s": int(webhook["retry_after_s"]) if running else None,
            "probe_in_s": int(webhook["probe_in_s"] or 0) if running else None,
        }
    return json.dumps(kept, sort_keys=True)


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(BACKLOG))

    def offer(self, chunk: bytes | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # a slow reader loses its oldest message, nobody else's
        self.queue.put_nowait(chunk)


class Hub:
    """One poller, many subscribers. Started and stopped with the app."""

    def __init__(
        self,
        settings: Settings,
        tick_state: Callable[[psycopg.Connection], dict[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        # The drain tick's figures (serve's own, in memory): pushed when they change.
        self._tick_state = tick_state
        self._latest_tick: bytes | None = None
        self._tick_seen: tuple[Any, ...] | None = None
        # The governors as the pages last received them (in a snapshot or a
        # `webhook` event), and the event to give a page that opens now.
        self._webhook_seen: str | None = None
        self._latest_webhook: bytes | None = None
        self._subscribers: set[Subscriber] = set()
        self._wanted = asyncio.Event()
        self._latest: bytes | None = None
        self._seq = 0
        self._closed = False
        self._last_problem: str | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        sub = Subscriber()
        if self._latest is not None:
            sub.offer(self._latest)  # a new page draws at once, not at the next row
        if self._latest_tick is not None:
            sub.offer(self._latest_tick)
        if self._latest_webhook is not None:
            sub.offer(self._latest_webhook)  # newer than the snapshot's governors
        self._subscribers.add(sub)
        self._wanted.set()
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
            if not self._subscribers:
                self._wanted.clear()
                # Its ages would be wrong by the time another page opens.
                self._latest = None
                self._latest_tick = None
                self._tick_seen = None
                self._latest_webhook = None
                self._webhook_seen = None

    def _publish(self, chunk: bytes, *, keep: bool = True) -> None:
        if keep:
            self._latest = chunk
            self._last_problem = None
        for sub in self._subscribers:
            sub.offer(chunk)

    def _problem(self, message: str) -> None:
        self._last_problem = message
        self._seq += 1
        self._publish(sse("problem", {"error": message}, self._seq), keep=False)

    def close(self) -> None:
        """Ends every stream, so a stopping server does not wait on open pages."""
        self._closed = True
        for sub in self._subscribers:
            sub.offer(None)

    # -- the poller ------------------------------------------------------------------

    def _open(self) -> contextlib.AbstractContextManager[psycopg.Connection]:
        return connect(endpoints(self._settings).db1, "DB1")

    def _read(self, conn: psycopg.Connection) -> tuple[str, bytes]:
        """The snapshot as an event, and the schedule mode it found."""
        snap = watch.read(conn)
        self._seq += 1
        # The snapshot carries the governors: no `webhook` event until they change.
        self._webhook_seen = _webhook_key(webhook_payload(snap.webhooks))
        self._latest_webhook = None
        return snap.schedule.mode, sse("snapshot", payload(snap), self._seq)

    async def run(self) -> None:
        while not self._closed:
            await self._wanted.wait()
            try:
                await self._follow()
            except (psycopg.Error, IntakeError) as exc:
                message = str(exc) if isinstance(exc, IntakeError) else f"DB1: {exc}"
                if message != self._last_problem:  # once per outage, not per retry
                    event(log, logging.WARNING, "dashboard_unreadable", error=message)
                self._problem(message)
                await asyncio.sleep(RETRY_S)
            except Exception:  # the pages' only reader must outlive a bug
                log.exception("dashboard_reader_failed")
                self._problem("the dashboard's reader failed (see serve's log); retrying")
                await asyncio.sleep(RETRY_S)

    async def _follow(self) -> None:
        """While pages are open: push a snapshot whenever a new metrics row appears."""
        stack = contextlib.ExitStack()
        conn = await asyncio.to_thread(lambda: stack.enter_context(self._open()))
        try:
            if not await asyncio.to_thread(is_provisioned, conn):
                raise NotProvisioned()
            seen: datetime | None = None
            mode: str | None = None  # None: nothing read yet on this connection
            loop = asyncio.get_running_loop()
            collected_at = -float(telemetry.INTERVAL_S)
            webhooks_read_at = loop.time()
            while self._subscribers and not self._closed:
                newest, age = await asyncio.to_thread(telemetry.newest, conn)
                # Where nothing is scheduled the open page is the collector, as
                # watch is in a terminal: watch.read collects once the newest
                # row is a collection old.
                due = (
                    mode == "none"
                    and (age is None or age >= telemetry.INTERVAL_S)
                    # An event without pools writes no row: try once a collection.
                    and loop.time() - collected_at >= telemetry.INTERVAL_S
                )
                if mode is None or newest != seen or due:
                    mode, chunk = await asyncio.to_thread(self._read, conn)
                    self._publish(chunk)
                    if due:
                        collected_at = loop.time()
                        newest, _ = await asyncio.to_thread(telemetry.newest, conn)
                    seen = newest
                await self._push_tick(conn)
                if loop.time() - webhooks_read_at >= WEBHOOK_POLL_S:
                    webhooks_read_at = loop.time()
                    await self._push_webhooks(conn)
                await asyncio.sleep(POLL_S)
        finally:
            await asyncio.to_thread(stack.close)

    async def _push_tick(self, conn: psycopg.Connection) -> None:
        """The tick's figures, when whether ticks are expected, stale or new has changed.

        The page counts the age on by itself between pushes.
        """
        if self._tick_state is None:
            return
        state = await asyncio.to_thread(self._tick_state, conn)
        key = (state["expected"], state["stale"], state["last_at"], state["last_outcome"])
        if key == self._tick_seen:
            return
        self._tick_seen = key
        self._seq += 1
        chunk = sse("tick", state, self._seq)
        self._latest_tick = chunk
        for sub in self._subscribers:
            sub.offer(chunk)

    async def _push_webhooks(self, conn: psycopg.Connection) -> None:
        """The governors, when they differ from what the pages last received."""
        found = webhook_payload(await asyncio.to_thread(telemetry.webhook_governors, conn))
        key = _webhook_key(found)
        if key == self._webhook_seen:
            return
        self._webhook_seen = key
        self._seq += 1
        chunk = sse("webhook", found, self._seq)
        self._latest_webhook = chunk
        for sub in self._subscribers:
            sub.offer(chunk)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="dashboard-hub")
        try:
            yield
        finally:
            self.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


HUB = web.AppKey("dashboard_hub", Hub)


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /api/events: the snapshot now, then one per new metrics row, until the page goes."""
    hub = request.app[HUB]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache, no-store",
            # nginx would otherwise buffer the stream and deliver it in lumps.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    async with hub.subscribe() as sub:
        while True:
            try:
                chunk = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                chunk = b": keepalive\n\n"
            if chunk is None:
                break
            try:
                await response.write(chunk)
            except (ConnectionResetError, ConnectionError):
                break
    return response
