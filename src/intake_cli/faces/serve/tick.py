"""`POST /api/drain/tick[?pool=P]`: one drain batch per call, for schedulers that speak HTTP."""

from __future__ import annotations

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from intake_cli.engine.tick import Ticker
from intake_cli.faces.serve.replies import ApiError, from_intake, ok
from intake_cli.faces.serve.state import ENDPOINTS, LOGGER, SETTINGS
from intake_cli.platform import config
from intake_cli.platform.errors import IntakeError

TICKER = web.AppKey("ticker", Ticker)


async def post_tick(request: web.Request) -> web.Response:
    pool_id = request.query.get("pool")
    if pool_id is not None and (reason := config.check_pool_id(pool_id)):
        raise ApiError(422, f"pool id: {reason}", "pool")
    try:
        counts = await request.app[TICKER].tick(pool_id)
    except IntakeError as exc:
        raise from_intake(exc, "pool") from None
    except (psycopg.Error, PoolTimeout) as exc:
        # DB1 unreachable or its pool exhausted: nothing was taken, the next tick tries again.
        request.app[LOGGER].warning("tick failed: %s", exc)
        raise ApiError(503, f"tick failed, nothing taken: {str(exc)[:200]}") from None
    return ok(counts)


async def _open(app: web.Application) -> None:
    where = app[ENDPOINTS]
    ticker = Ticker(app[SETTINGS], where.db1, where.db2, app[LOGGER])
    await ticker.open()
    app[TICKER] = ticker


async def _close(app: web.Application) -> None:
    if TICKER in app:
        await app[TICKER].close()


def install(app: web.Application) -> None:
    app.router.add_post("/api/drain/tick", post_tick)
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
