"""The admin API's routes: a thin HTTP layer over the engine functions the CLI calls.

The engine's functions are synchronous (psycopg connections of their own);
each runs in a worker thread so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from aiohttp import web

from intake_cli.engine import controls, lifecycle, telemetry
from intake_cli.engine import dlq as dead_letters
from intake_cli.faces import watch
from intake_cli.faces.serve import tick
from intake_cli.faces.serve.replies import ApiError, from_intake, ok
from intake_cli.faces.serve.state import ENDPOINTS, LOGGER, SETTINGS
from intake_cli.platform import config
from intake_cli.platform.db import connect
from intake_cli.platform.errors import IntakeError, UnknownPool
from intake_cli.platform.logs import event

T = TypeVar("T")

DLQ_PAGE_DEFAULT = 100
DLQ_PAGE_MAX = 1000
HISTORY_DEFAULT_S = 300
HISTORY_MAX_S = 86_400
# pgmq message ids are bigint.
BIGINT_MAX = 2**63 - 1


# -- reading requests ----------------------------------------------------------


def pool_param(request: web.Request) -> str:
    pool_id = request.match_info["pool"]
    if reason := config.check_pool_id(pool_id):
        raise ApiError(422, f"pool id: {reason}", "pool")
    return pool_id


def int_param(
    request: web.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and low <= int(text) <= high):
        raise ApiError(422, f"{name}: expected an integer from {low} to {high}", name)
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # As in intake.yaml: the last one would silently win.
            raise ApiError(422, f"{key} is given twice: name each setting once", key)
        seen[key] = value
    return seen


async def json_body(request: web.Request, allowed: set[str] | None = None) -> dict[str, Any]:
    """The request's JSON object; malformed, oversized or unexpected bodies are refused."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body over {request.app._client_max_size} bytes") from None
    try:
        body = json.loads(raw or b"null", object_pairs_hook=_no_duplicates)
    except ApiError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", None) from None
    if not isinstance(body, dict):
        raise ApiError(422, "expected a JSON object as the request body", None)
    if allowed is not None:
        for key in body:
            if key not in allowed:
                raise ApiError(
                    422, f"{key}: not a field of this request (expected {sorted(allowed)})", key
                )
    return body


# -- calling the engine --------------------------------------------------------


async def on_db1(request: web.Request, work: Callable[[psycopg.Connection], T]) -> T:
    """`work` with a DB1 connection, in a thread."""
    dsn = request.app[ENDPOINTS].db1

    def run() -> T:
        with connect(dsn, "DB1") as conn:
            return work(conn)

    return await asyncio.to_thread(run)


def audit(request: web.Request, action: str, **fields: Any) -> None:
    """One line per change: who (token or loopback), from where, what."""
    event(
        request.app[LOGGER],
        logging.INFO,
        "admin_change",
        who=request.get("who"),
        remote=request.remote,
        action=action,
        **fields,
    )


# -- handlers ------------------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    answer = await asyncio.to_thread(lifecycle.status, request.app[SETTINGS])
    answer["drain_tick"] = await tick.current_state(request.app)
    return ok(answer)


async def get_snapshot(request: web.Request) -> web.Response:
    snap = await asyncio.to_thread(watch.snapshot, request.app[SETTINGS])
    return ok(snap.as_json())


async def get_pools(request: web.Request) -> web.Response:
    return ok({"pools": await on_db1(request, controls.pools)})


def _require_pool(conn: psycopg.Connection, pool_id: str) -> None:
    if not any(p["pool_id"] == pool_id for p in controls.pools(conn)):
        raise from_intake(UnknownPool(f"pool {pool_id!r} is not provisioned in DB1"), "pool")


async def get_pool_metrics(request: web.Request) -> web.Response:
    pool_id = pool_param(request)
    seconds = int_param(request, "seconds", HISTORY_DEFAULT_S, 1, HISTORY_MAX_S)

    def read(conn: psycopg.Connection) -> list[dict[str, Any]]:
        _require_pool(conn, pool_id)
        return telemetry.history(conn, pool_id, seconds or HISTORY_DEFAULT_S)

    rows = await on_db1(request, read)
    return ok({"pool_id": pool_id, "seconds": seconds, "rows": rows})


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    pool_id = pool_param(request)
    try:
        await on_db1(request, lambda conn: controls.set_paused(conn, pool_id, paused))
    except IntakeError as exc:
        raise from_intake(exc, "pool") from None
    audit(request, "pause" if paused else "resume", pool_id=pool_id)
    return ok({"pool_id": pool_id, "paused": paused})


async def post_pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


async def post_resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def patch_settings(request: web.Request) -> web.Response:
    pool_id = pool_param(request)
    body = await json_body(request)
    try:
        changes = controls.check_changes(body)
    except IntakeError as exc:
        raise from_intake(exc, None if body else "body") from None
    where = request.app[ENDPOINTS]
    try:
        applied = await asyncio.to_thread(
            controls.set_settings, where.db1, where.db2, pool_id, changes
        )
    except IntakeError as exc:
        raise from_intake(exc, "pool" if "not provisioned" in str(exc) else None) from None
    # A URL stored before credentials were refused still never leaves the server.
    shown = {
        key: {"old": redacted(old), "new": redacted(new)} for key, (old, new) in applied.items()
    }
    audit(request, "settings", pool_id=pool_id, changes=sorted(applied))
    return ok({"pool_id": pool_id, "changed": shown})


def redacted(value: Any) -> Any:
    return config.redact(value) if isinstance(value, str) else value


async def get_dlq(request: web.Request) -> web.Response:
    # A letter intake cannot read is in the page, marked ("readable": false,
    # "problems"), so the others are never hidden behind it.
    limit = int_param(request, "limit", DLQ_PAGE_DEFAULT, 1, DLQ_PAGE_MAX) or DLQ_PAGE_DEFAULT
    after = int_param(request, "after", None, 0, BIGINT_MAX)
    dlq = request.app[SETTINGS].dlq_name
    letters = await on_db1(request, lambda conn: dead_letters.list_letters(conn, dlq, limit, after))
    return ok(
        {
            "letters": [letter.as_json() for letter in letters],
            # The next page's `after`; null on the last page.
            "next_after": letters[-1].msg_id if len(letters) == limit else None,
        }
    )


def _msg_id(request: web.Request) -> int:
    text = request.match_info["msg_id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= BIGINT_MAX):
        raise ApiError(422, f"msg_id: expected a dead letter id, got {text[:40]!r}", "msg_id")
    return int(text)


async def get_letter(request: web.Request) -> web.Response:
    msg_id = _msg_id(request)
    dlq = request.app[SETTINGS].dlq_name
    try:
        return ok(await on_db1(request, lambda conn: dead_letters.show(conn, dlq, msg_id)))
    except IntakeError as exc:
        raise from_intake(exc, "msg_id") from None


def _ids(value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= BIGINT_MAX for v in value
    ):
        raise ApiError(422, "msg_ids: expected a list of dead letter ids", "msg_ids")
    return value


async def post_replay(request: web.Request) -> web.Response:
    body = await json_body(request, {"msg_ids", "all", "dry_run"})
    msg_ids = _ids(body.get("msg_ids"))
    for flag in ("all", "dry_run"):
        if not isinstance(body.get(flag, False), bool):
            raise ApiError(422, f"{flag}: expected true or false", flag)
    try:
        selected = dead_letters.check_selection(msg_ids, body.get("all", False))
    except IntakeError as exc:
        raise from_intake(exc, "msg_ids") from None
    dry_run = body.get("dry_run", False)
    settings = request.app[SETTINGS]
    try:
        report = await on_db1(
            request,
            lambda conn: dead_letters.replay(
                conn, settings.queue_name, settings.dlq_name, selected, dry_run=dry_run
            ),
        )
    except IntakeError as exc:
        # Unknown ids, or only unreadable ones named: nothing was replayed.
        raise from_intake(exc, "msg_ids") from None
    if not dry_run:
        audit(
            request,
            "dlq_replay",
            msg_ids=[item["msg_id"] for item in report.replayed],
            pool_ids=sorted({str(item["pool_id"]) for item in report.replayed}),
        )
    # Unreadable letters named with readable ones stay, listed in "refused".
    return ok(report.as_json())


PURGE_CONFIRM = "purge"


async def post_purge(request: web.Request) -> web.Response:
    body = await json_body(request, {"confirm"})
    if body.get("confirm") != PURGE_CONFIRM:
        raise ApiError(
            422,
            "purge deletes every dead letter: export them first (GET /api/dlq), "
            f'then send {{"confirm": "{PURGE_CONFIRM}"}}',
            "confirm",
        )
    dlq = request.app[SETTINGS].dlq_name
    purged = await on_db1(request, lambda conn: dead_letters.purge(conn, dlq))
    audit(request, "dlq_purge", purged=purged)
    return ok({"purged": purged, "dlq": dlq})


async def get_workers(request: web.Request) -> web.Response:
    workers = await on_db1(request, telemetry.workers)
    return ok({"workers": [w.as_json() for w in workers]})


def install(app: web.Application) -> None:
    app.router.add_get("/api/status", get_status)
    app.router.add_get("/api/snapshot", get_snapshot)
    app.router.add_get("/api/pools", get_pools)
    app.router.add_get("/api/pools/{pool}/metrics", get_pool_metrics)
    app.router.add_post("/api/pools/{pool}/pause", post_pause)
    app.router.add_post("/api/pools/{pool}/resume", post_resume)
    app.router.add_patch("/api/pools/{pool}/settings", patch_settings)
    app.router.add_get("/api/dlq", get_dlq)
    app.router.add_get("/api/dlq/{msg_id}", get_letter)
    app.router.add_post("/api/dlq/replay", post_replay)
    app.router.add_post("/api/dlq/purge", post_purge)
    app.router.add_get("/api/workers", get_workers)
