"""The buyers' HTTP API: claim, and later read, one's own claim.

Every answer is JSON. What each claim outcome becomes (docs/gateway.md):

| outcome                      | status | note                                   |
|------------------------------|--------|----------------------------------------|
| claimed                      | 200    | the unit, its idempotency key          |
| already_claimed, limit_reached | 200  | the unit the buyer already holds       |
| sold_out                     | 409    |                                        |
| paused                       | 503    | Retry-After: the operator paused sales |
| recovering                   | 503    | Retry-After: DB1 rebuilds its inventory|
| unknown_pool                 | 404    |                                        |
| not_open, opening            | 503    | Retry-After: the fair opening's gate   |

and before DB1 is asked: 401 (no valid token), 404 (a pool not in this
gateway's configuration), 413 (body too large), 429 with Retry-After (rate),
503 (DB1 unreachable). The wire itself (keep-alive, limits, timeouts) is
http1.py's.

Only the pools in intake.yaml are ever claimed from, watched or held in
memory here: a pool id is text a buyer writes in the URL, and each one the
gateway took up would cost DB1 a statement a second for as long as it is
watched, and a little memory for ever. Any other id is answered from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from intake_cli.engine import claims, opening
from intake_cli.engine.claim_views import FINAL_STATES, ClaimView
from intake_cli.faces.gateway.auth import TokenRefused, Verifier
from intake_cli.faces.gateway.batcher import ClaimBatcher
from intake_cli.faces.gateway.http1 import STREAMED, Request, Response
from intake_cli.faces.gateway.limits import TokenBuckets, retry_after
from intake_cli.faces.gateway.snapshot import FIRST_READ_WAIT_S, REFRESH_S, Snapshot
from intake_cli.platform.config import GatewaySettings, PoolSettings
from intake_cli.platform.pgconn import async_pool
from intake_cli.platform.sqlfiles import queries

# Connections each gateway process keeps to DB1. Batching means few are
# needed: one carries a whole batch.
DB1_CONNECTIONS = 4

STATUS = {
    "claimed": 200,
    "already_claimed": 200,
    "limit_reached": 200,
    "sold_out": 409,
    "paused": 503,
    "recovering": 503,
    "unknown_pool": 404,
    "invalid_user": 400,
    # DB1 refuses claims in a pool whose fair opening is not complete.
    "not_open": 503,
    "opening": 503,
}
# Seconds a buyer is told to wait before asking again.
RETRY_AFTER = {"paused": "5", "recovering": "2", "not_open": "1", "opening": "1"}

# Late arrivals wait this long for an opening under way, then are told to retry.
OPENING_WAIT_S = 30.0

log = logging.getLogger(__name__)


@dataclass
class Opening:
    """One pool's fair opening, as this process sees it."""

    opens_at: datetime
    admit_per_second: int
    done: asyncio.Event
    task: asyncio.Task[None] | None = None


@dataclass
class Gateway:
    settings: GatewaySettings
    queue_name: str
    dsn: str
    verifier: Verifier
    # The pools of intake.yaml: the only ids that reach DB1 or the snapshot.
    pools: frozenset[str] = frozenset()
    batcher: ClaimBatcher | None = None
    db1: AsyncConnectionPool | None = None
    snapshot: Snapshot | None = None
    openings: dict[str, Opening] | None = None
    per_ip: TokenBuckets | None = None
    per_buyer: TokenBuckets | None = None
    # Claim reads answered (GET …/claim), for /healthz beside DB1's statements.
    reads: int = 0

    def __post_init__(self) -> None:
        self.per_ip = TokenBuckets(self.settings.per_ip_rate, self.settings.per_ip_burst)
        self.per_buyer = TokenBuckets(self.settings.per_buyer_rate, self.settings.per_buyer_burst)


def _body(body: bytes, status: int = 200, **headers: str) -> Response:
    return Response(status, body, headers or None)


def _json(data: dict[str, Any], status: int = 200, **headers: str) -> Response:
    # orjson: ~0.3 µs a body against ~4 µs for json.dumps with separators.
    return _body(orjson.dumps(data), status, **headers)


def _error(status: int, error: str, detail: str, **headers: str) -> Response:
    return _json({"error": error, "detail": detail}, status, **headers)


def _too_many(wait: float) -> Response:
    return _error(429, "rate_limited", "too many requests", **{"Retry-After": retry_after(wait)})


async def _buyer(request: Request, gateway: Gateway) -> str | Response:
    """The verified buyer of a request, or the response refusing it."""
    assert gateway.per_ip is not None and gateway.per_buyer is not None
    # Before any signature is checked: a flood costs one dict lookup each.
    if wait := gateway.per_ip.take(request.remote):
        return _too_many(wait)
    try:
        buyer = await gateway.verifier.buyer(request.authorization)
    except TokenRefused as exc:
        return _error(
            401, "unauthorized", str(exc), **{"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    if wait := gateway.per_buyer.take(buyer):
        return _too_many(wait)
    return buyer


async def _buyer_and_pool(
    request: Request, gateway: Gateway, pool_id: str
) -> tuple[str, str] | Response:
    """The verified buyer and the pool a request names, or the response refusing it."""
    buyer = await _buyer(request, gateway)
    if isinstance(buyer, Response):
        return buyer
    if pool_id not in gateway.pools:
        # The answer DB1 gives for a pool it does not have, without asking it.
        body = {"outcome": "unknown_pool", "error": "unknown_pool", "detail": "no such pool"}
        return _json(body, 404)
    return buyer, pool_id


async def post_claim(gateway: Gateway, request: Request, pool_id: str) -> Response:
    # The body carries nothing the claim needs: http1 has read it (bounded:
    # 413 above max_body_bytes, 408 when too slow) and dropped it.
    asked = await _buyer_and_pool(request, gateway, pool_id)
    if isinstance(asked, Response):
        return asked
    buyer, pool_id = asked
    held = await _opening(gateway, pool_id, buyer)
    if held is not None:
        return held
    assert gateway.batcher is not None
    try:
        answer = await gateway.batcher.claim(pool_id, buyer)
    except psycopg.Error:  # DB1 out of reach (or the pool timed out): retry later
        return _error(503, "unavailable", "claims are unavailable", **{"Retry-After": "2"})
    return _answer(answer)


async def _opening(gateway: Gateway, pool_id: str, buyer: str) -> Response | None:
    """Before the opening: a receipt (202). During it: wait. After it (or none): None.

    DB1 decides whether the room is still open (its clock, and the lock the
    room's closing takes), not this process's clock: a receipt given here is
    always one the opening admits.
    """
    found = (gateway.openings or {}).get(pool_id)
    if found is None or found.done.is_set():
        return None
    assert gateway.db1 is not None
    try:
        async with gateway.db1.connection() as conn:
            joined = await opening.join(conn, pool_id, buyer)
    except psycopg.Error:
        return _error(503, "unavailable", "claims are unavailable", **{"Retry-After": "2"})
    if joined.outcome == "waiting":
        body = {
            "outcome": "waiting",
            "pool_id": pool_id,
            "receipt": str(joined.receipt),
            "opens_at": found.opens_at.isoformat(),
        }
        wait = found.opens_at.timestamp() - time.time()
        return _json(body, 202, **{"Retry-After": retry_after(max(1.0, wait))})
    # The room is closed and still being admitted: later arrivals come after
    # every one of them.
    try:
        await asyncio.wait_for(found.done.wait(), OPENING_WAIT_S)
    except TimeoutError:
        return _error(503, "opening", "the opening is under way", **{"Retry-After": "2"})
    return None


async def _run_opening(gateway: Gateway, pool_id: str, found: Opening) -> None:
    # This host's clock only says when to start asking; DB1's says when the room closes.
    await asyncio.sleep(max(0.0, found.opens_at.timestamp() - time.time()))
    assert gateway.db1 is not None
    while True:
        try:
            await opening.open_pool(gateway.db1, pool_id, found.admit_per_second)
            break
        except psycopg.Error as exc:
            log.warning("opening %s failed (%s); trying again", pool_id, type(exc).__name__)
            await asyncio.sleep(1)
    found.done.set()


def _answer(answer: claims.Claim) -> Response:
    body = answer.answer()
    headers = {"Retry-After": RETRY_AFTER[answer.outcome]} if answer.outcome in RETRY_AFTER else {}
    return _json(body, STATUS.get(answer.outcome, 500), **headers)


# Seconds between refreshes we suggest to a buyer who polls.
MIN_REFRESH_S, MAX_REFRESH_S, UNMEASURED_REFRESH_S = 1, 30, 5
# A comment line on an idle event stream, so dead connections are noticed.
HEARTBEAT_S = 15.0


# A buyer the snapshot has no claim for, said the same way to everyone.
NO_CLAIM = orjson.dumps({"state": "none", "refresh_after_seconds": None})


def _view_body(view: ClaimView, velocity: float | None) -> dict[str, Any]:
    body = view.as_json()
    eta = view.ahead / velocity if view.ahead is not None and velocity else None
    body["eta_seconds"] = round(eta, 1) if eta is not None else None
    if view.state in FINAL_STATES:
        body["refresh_after_seconds"] = None
    elif eta is None:
        body["refresh_after_seconds"] = UNMEASURED_REFRESH_S
    else:
        body["refresh_after_seconds"] = int(min(MAX_REFRESH_S, max(MIN_REFRESH_S, eta / 2)))
    return body


def _view_bytes(view: ClaimView, velocity: float | None) -> bytes:
    return orjson.dumps(_view_body(view, velocity))


async def _watched_view(gateway: Gateway, pool_id: str, buyer: str) -> ClaimView | None:
    snapshot = gateway.snapshot
    assert snapshot is not None
    if not snapshot.watch(pool_id, buyer):
        # New to this process: its claim is in the picture after the next
        # refresh (or the one after, if one was already under way).
        for _ in range(2):
            await snapshot.next_refresh(FIRST_READ_WAIT_S)
            if snapshot.view(pool_id, buyer) is not None:
                break
    return snapshot.view(pool_id, buyer)


async def get_claim(gateway: Gateway, request: Request, pool_id: str) -> Response:
    """The buyer's own claim, from this process's snapshot (no DB1 query of its own)."""
    asked = await _buyer_and_pool(request, gateway, pool_id)
    if isinstance(asked, Response):
        return asked
    buyer, pool_id = asked
    view = await _watched_view(gateway, pool_id, buyer)
    gateway.reads += 1
    headers = {"Cache-Control": "no-store"}
    if view is None:
        in_room = await _in_waiting_room(gateway, pool_id, buyer)
        if in_room is not None:
            return _json(in_room, 200, **headers)
        return _body(NO_CLAIM, 404, **headers)
    assert gateway.snapshot is not None
    # Written once per refresh that changed it, however often the buyer asks.
    body = gateway.snapshot.rendered(pool_id, buyer, view, _view_bytes)
    return _body(body, 200, **headers)


async def _in_waiting_room(gateway: Gateway, pool_id: str, buyer: str) -> dict[str, Any] | None:
    """A buyer with a receipt and no claim yet: where they stand in the room."""
    found = (gateway.openings or {}).get(pool_id)
    if found is None:
        return None
    assert gateway.db1 is not None
    try:
        async with gateway.db1.connection() as conn:
            stands = await opening.place(conn, pool_id, buyer)
    except psycopg.Error:
        return None
    if stands is None:
        return None
    body: dict[str, Any] = {
        "receipt": str(stands.receipt),
        "opens_at": found.opens_at.isoformat(),
        "admitted_no": stands.admitted_no,
    }
    if stands.admitted_no is None:
        wait = max(MIN_REFRESH_S, found.opens_at.timestamp() - time.time())
        return {"state": "waiting", **body, "refresh_after_seconds": int(min(MAX_REFRESH_S, wait))}
    if stands.outcome in FINAL_ROOM_OUTCOMES:
        return {"state": stands.outcome, **body, "refresh_after_seconds": None}
    # Admitted with a unit: the claim shows here after the snapshot's next refresh.
    return {"state": "admitted", **body, "refresh_after_seconds": MIN_REFRESH_S}


# An admission that ended without a unit: the buyer's answer is final.
FINAL_ROOM_OUTCOMES = frozenset({"sold_out", "invalid_user", "unknown_pool"})


async def claim_events(gateway: Gateway, request: Request, pool_id: str) -> Response | None:
    """Server-sent events: each change of the buyer's claim; ends with its final state."""
    asked = await _buyer_and_pool(request, gateway, pool_id)
    if isinstance(asked, Response):
        return asked
    buyer, pool_id = asked
    snapshot = gateway.snapshot
    assert snapshot is not None
    stream = request.connection.start_stream(
        request,
        {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
    )
    timeout = gateway.settings.client_timeout_s
    sent: tuple[str, int | None] | None = None
    number = 0
    quiet_since = asyncio.get_running_loop().time()
    try:
        view = await _watched_view(gateway, pool_id, buyer)
        while True:
            now = asyncio.get_running_loop().time()
            if view is not None and (view.state, view.ahead) != sent:
                number += 1
                body = snapshot.rendered(pool_id, buyer, view, _view_bytes)
                frame = b"id: %d\nevent: claim\ndata: %s\n\n" % (number, body)
                # A reader too slow to take a few hundred bytes is let go.
                await asyncio.wait_for(stream.write(frame), timeout)
                sent, quiet_since = (view.state, view.ahead), now
                if view.state in FINAL_STATES:
                    break
            elif now - quiet_since >= HEARTBEAT_S:
                await asyncio.wait_for(stream.write(b": keep-alive\n\n"), timeout)
                quiet_since = now
            await snapshot.next_refresh(2 * REFRESH_S)
            snapshot.watch(pool_id, buyer)
            view = snapshot.view(pool_id, buyer)
        await asyncio.wait_for(stream.end(), timeout)
    except (ConnectionResetError, TimeoutError):
        # The buyer went away; nothing to clean up but the watch, which
        # expires. The connection cannot carry another answer after a part of one.
        request.connection.abort()
    return STREAMED


async def healthz(gateway: Gateway, request: Request, _: str) -> Response:
    """Liveness, and this process's DB1 statement counts (benchmarks read them;
    with --workers each answer is one process's, told apart by its pid)."""
    batcher, snapshot = gateway.batcher, gateway.snapshot
    return _json(
        {
            "ok": True,
            "pid": os.getpid(),
            "reads": gateway.reads,
            "claims": batcher.claims if batcher else 0,
            "claim_batches": batcher.batches if batcher else 0,
            "snapshot_queries": snapshot.queries if snapshot else 0,
            "watched": snapshot.watched if snapshot else 0,
        }
    )


async def start(gateway: Gateway) -> None:
    """DB1's pool, the batcher, the snapshot and the openings: before the port is bound."""
    # Autocommit: a claim batch, a snapshot read, each is one statement, and
    # as its own transaction it costs one round trip, not BEGIN and COMMIT
    # besides (the openings' steps open their transactions themselves).
    pool = async_pool(
        gateway.dsn,
        kwargs={"autocommit": True},
        min_size=1,
        max_size=DB1_CONNECTIONS,
        open=False,
    )
    await pool.open()
    gateway.db1 = pool
    gateway.batcher = ClaimBatcher(pool, gateway.settings.max_batch, gateway.settings.max_wait_ms)
    gateway.snapshot = Snapshot(pool, gateway.queue_name, gateway.pools)
    gateway.snapshot.start()
    await _follow_db1_openings(gateway, pool)
    for pool_id, found in (gateway.openings or {}).items():
        found.task = asyncio.get_running_loop().create_task(_run_opening(gateway, pool_id, found))


async def _follow_db1_openings(gateway: Gateway, pool: AsyncConnectionPool) -> None:
    """DB1 enforces each pool's opening (what `intake up` wrote there): follow it
    where intake.yaml was changed and `intake up` not run since, and say so."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            queries("gateway")["opens_at"], {"pool_ids": sorted(gateway.pools)}
        )
        in_db1: dict[str, datetime | None] = dict(await cur.fetchall())
    openings = gateway.openings if gateway.openings is not None else {}
    for pool_id, opens_at in in_db1.items():
        found = openings.get(pool_id)
        configured = found.opens_at if found else None
        if configured == opens_at:
            continue
        log.warning(
            "pool %s: DB1 opens it at %s, intake.yaml at %s; following DB1 (run `intake up`)",
            pool_id,
            opens_at.isoformat() if opens_at else "no opening",
            configured.isoformat() if configured else "no opening",
        )
        if opens_at is None:
            openings.pop(pool_id, None)
        else:
            admit = found.admit_per_second if found else 0
            openings[pool_id] = Opening(opens_at, admit, asyncio.Event())
    gateway.openings = openings


async def stop(gateway: Gateway) -> None:
    if gateway.snapshot is not None:
        await gateway.snapshot.stop()
    for found in (gateway.openings or {}).values():
        if found.task is not None:
            found.task.cancel()
    if gateway.batcher is not None:
        await gateway.batcher.close()
    if gateway.db1 is not None:
        await gateway.db1.close()


Handler = Callable[[Gateway, Request, str], Awaitable[Response | None]]
# The answers each path has, by method; HEAD is GET without the body.
CLAIM: dict[str, Handler] = {"POST": post_claim, "GET": get_claim, "HEAD": get_claim}
EVENTS: dict[str, Handler] = {"GET": claim_events}
HEALTH: dict[str, Handler] = {"GET": healthz, "HEAD": healthz}
POOLS_PREFIX = "/v1/pools/"
NOT_FOUND = Response(404, b'{"error":"not_found","detail":"no such path"}')


def _pool_path(path: str) -> tuple[dict[str, Handler], str] | None:
    """`/v1/pools/{pool}/claim[/events]` for any id: the id percent-decoded,
    one path segment, as the pattern router the gateway had matched it."""
    if not path.startswith(POOLS_PREFIX):
        return None
    rest = path[len(POOLS_PREFIX) :]
    for suffix, handlers in (("/claim/events", EVENTS), ("/claim", CLAIM)):
        if rest.endswith(suffix):
            segment = rest[: -len(suffix)]
            if segment and "/" not in segment:
                return handlers, unquote(segment, errors="replace")
    return None


def dispatcher(gateway: Gateway) -> Callable[[Request], Awaitable[Response | None]]:
    """The gateway's routes, for http1. Each configured pool's paths are found
    with one dict lookup; any other id goes through `_pool_path` and is
    answered unknown_pool without DB1."""
    exact: dict[str, tuple[dict[str, Handler], str]] = {"/healthz": (HEALTH, "")}
    for pool_id in gateway.pools:
        exact[f"{POOLS_PREFIX}{pool_id}/claim"] = (CLAIM, pool_id)
        exact[f"{POOLS_PREFIX}{pool_id}/claim/events"] = (EVENTS, pool_id)

    async def dispatch(request: Request) -> Response | None:
        found = exact.get(request.path) or _pool_path(request.path)
        if found is None:
            return NOT_FOUND
        handlers, pool_id = found
        handler = handlers.get(request.method)
        if handler is None:
            return _error(
                405, "method_not_allowed", "method not allowed", Allow=", ".join(handlers)
            )
        return await handler(gateway, request, pool_id)

    return dispatch


def build(
    settings: GatewaySettings,
    queue_name: str,
    dsn: str,
    verifier: Verifier,
    pools: tuple[PoolSettings, ...] = (),
) -> Gateway:
    openings = {
        p.pool_id: Opening(p.opens_at, p.admit_per_second, asyncio.Event())
        for p in pools
        if p.opens_at is not None
    }
    return Gateway(
        settings,
        queue_name,
        dsn,
        verifier,
        pools=frozenset(p.pool_id for p in pools),
        openings=openings,
    )
