"""Each process's picture of its buyers' claims, refreshed at most once a second.

A million buyers refreshing every 20 s is 50,000 reads a second: they must
not cost DB1 a query each. A buyer who asks (GET …/claim, or an open event
stream) is added to the process's watch list; once a second one statement
per pool reads every watched buyer's claim, and every read and every event
is served from that picture. A buyer not asked about for WATCH_S seconds is
dropped from the list. Only the pools the snapshot was made with (intake.yaml's)
can be watched: the list has one entry per configured pool from the start and
never gains another, so no pool id a buyer makes up costs DB1 a statement or
this process memory.

Positions in line cost the most: they number the pool's whole queue (a
herd's queue of 100,000 intents took DB1 ~0.27 s of CPU per refresh, per
gateway process). So they are read only as often as keeps that reading
within POSITIONS_SHARE of DB1's time (a 0.27 s read: every ~5 s), and in
between a queued claim shows its last known position, which only overstates
the wait. A buyer seen since the last such read, whose claim has no position
yet, brings the next one forward (within NEWCOMERS_SHARE: every ~1.4 s at
most). States, units and outcomes are refreshed every second.

The outflow a buyer's ETA is reckoned from comes with the same statement:
the drain's last measured velocity, held down to the webhook governor's rate
in force (0 while its breaker is open), so a throttled payment provider
lengthens the ETA at once rather than a collection or two later, at no
extra statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import psycopg
from psycopg_pool import AsyncConnectionPool

from intake_cli.engine import claim_views
from intake_cli.engine.claim_views import FINAL_STATES, ClaimView

REFRESH_S = 1.0
WATCH_S = 60.0
# A first-time asker waits for the next refresh rather than reading DB1 itself.
FIRST_READ_WAIT_S = 3 * REFRESH_S
# The most of DB1's time (per gateway process) that position reads may take;
# more while new buyers wait for their first position.
POSITIONS_SHARE = 0.05
NEWCOMERS_SHARE = 0.2

log = logging.getLogger(__name__)


class Snapshot:
    def __init__(
        self, pool: AsyncConnectionPool, queue_name: str, pools: Iterable[str] = ()
    ) -> None:
        self._pool = pool
        self._queue_name = queue_name
        # pool id -> buyer -> when last asked about (monotonic); streams keep theirs fresh.
        # Fixed keys: the configured pools, each read only while it has buyers.
        self._watched: dict[str, dict[str, float]] = {pool_id: {} for pool_id in pools}
        self._views: dict[tuple[str, str], ClaimView] = {}
        # Buyers watched since the refresh under way began, whom no refresh has
        # read yet: until one has, their answer is not "no claim" but "wait".
        self._unread: set[tuple[str, str]] = set()
        # A view as last rendered for a reader, with what it was rendered from.
        self._rendered: dict[tuple[str, str], tuple[ClaimView, float | None, bytes]] = {}
        self._velocity: dict[str, float | None] = {}
        # Positions last read, and when each pool's are due again (monotonic):
        # on schedule, and sooner for buyers with none yet.
        self._ahead: dict[tuple[str, str], int | None] = {}
        self._positions_due: dict[str, tuple[float, float]] = {}
        self._refreshed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.queries = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def watch(self, pool_id: str, buyer: str) -> bool:
        """Keep `buyer` in the picture; True once a refresh has read them.

        False for a buyer new to the picture, and for one whose first read is
        still to come (a second request right behind the first): the caller
        waits for the next refresh rather than answer "no claim" too soon.
        A pool the snapshot was not made with is never watched (False, always).
        """
        watched = self._watched.get(pool_id)
        if watched is None:
            return False
        known = buyer in watched
        watched[buyer] = time.monotonic()
        if not known:
            self._unread.add((pool_id, buyer))
            return False
        return (pool_id, buyer) not in self._unread

    @property
    def watched(self) -> int:
        """Buyers in the picture, over every pool."""
        return sum(len(buyers) for buyers in self._watched.values())

    def view(self, pool_id: str, buyer: str) -> ClaimView | None:
        return self._views.get((pool_id, buyer))

    def velocity(self, pool_id: str) -> float | None:
        return self._velocity.get(pool_id)

    def rendered(
        self,
        pool_id: str,
        buyer: str,
        view: ClaimView,
        render: Callable[[ClaimView, float | None], bytes],
    ) -> bytes:
        """`render(view, velocity)`, worked out once per view and velocity.

        A buyer who polls gets the same bytes until a refresh brings a new
        view: each refresh makes new view objects, so one that is still the
        same object (and the same velocity) renders the same.
        """
        key = (pool_id, buyer)
        velocity = self._velocity.get(pool_id)
        done = self._rendered.get(key)
        if done is not None and done[0] is view and done[1] == velocity:
            return done[2]
        body = render(view, velocity)
        self._rendered[key] = (view, velocity, body)
        return body

    async def next_refresh(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refreshed.wait(), timeout)

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            reading, self._unread = self._unread, set()
            try:
                await self._refresh()
            except psycopg.Error as exc:
                # Readers keep the last picture; the next second tries again.
                log.warning("claim snapshot refresh failed: %s", type(exc).__name__)
                self._unread |= reading
            # Wake everyone waiting on this refresh, and start the next wait.
            done, self._refreshed = self._refreshed, asyncio.Event()
            done.set()
            await asyncio.sleep(max(0.0, REFRESH_S - (time.monotonic() - started)))

    async def _refresh(self) -> None:
        now = time.monotonic()
        for pool_id, watched in list(self._watched.items()):
            for buyer in [b for b, at in watched.items() if now - at > WATCH_S]:
                del watched[buyer]
                self._views.pop((pool_id, buyer), None)
                self._ahead.pop((pool_id, buyer), None)
                self._rendered.pop((pool_id, buyer), None)
            if not watched:
                self._positions_due.pop(pool_id, None)
                continue
            with_positions = self._positions_wanted(pool_id, watched, now)
            started = time.monotonic()
            async with self._pool.connection() as conn:
                picture = await claim_views.read(
                    conn, self._queue_name, pool_id, list(watched), with_positions
                )
            self.queries += 1
            if with_positions:
                took = time.monotonic() - started
                self._positions_due[pool_id] = (
                    now + max(REFRESH_S, took / POSITIONS_SHARE),
                    now + max(REFRESH_S, took / NEWCOMERS_SHARE),
                )
            for buyer in watched:
                found = picture.claims.get(buyer)
                if found is None:
                    self._views.pop((pool_id, buyer), None)
                    self._ahead.pop((pool_id, buyer), None)
                    self._rendered.pop((pool_id, buyer), None)
                    continue
                if with_positions or found.state in FINAL_STATES:
                    self._ahead[(pool_id, buyer)] = found.ahead
                else:
                    found = dataclasses.replace(found, ahead=self._ahead.get((pool_id, buyer)))
                self._views[(pool_id, buyer)] = found
            if picture.velocity is not None or pool_id not in self._velocity:
                self._velocity[pool_id] = picture.velocity

    def _positions_wanted(self, pool_id: str, watched: dict[str, float], now: float) -> bool:
        scheduled, newcomers = self._positions_due.get(pool_id, (0.0, 0.0))
        if now >= scheduled:
            return True
        return now >= newcomers and any(
            (view := self._views.get((pool_id, buyer))) is not None
            and view.state not in FINAL_STATES
            and (pool_id, buyer) not in self._ahead
            for buyer in watched
        )
