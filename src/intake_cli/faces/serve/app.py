"""The `intake serve` application: routes, middlewares, and what lives as long as the process."""

from __future__ import annotations

import logging

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from intake_cli.faces.serve import api, auth, dashboard, metrics, openapi, tick
from intake_cli.faces.serve.replies import ApiError, error, from_intake
from intake_cli.faces.serve.state import ENDPOINTS, LOGGER, SETTINGS
from intake_cli.faces.serve.tick import TickExpectation
from intake_cli.platform.config import Settings
from intake_cli.platform.db import endpoints
from intake_cli.platform.errors import IntakeError
from intake_cli.platform.logs import LOGGER_NAME

__all__ = ["ENDPOINTS", "LOGGER", "SETTINGS", "build_app"]
# Bodies are a few ids or settings: anything larger is refused (413) unread.
MAX_BODY_BYTES = 256 * 1024


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path in ("/api", "/metrics")


@web.middleware
async def json_errors(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """Refusals as JSON with the CLI's message; never a traceback to the caller."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.message, exc.field)
    except IntakeError as exc:
        refused = from_intake(exc)
        return error(refused.status, refused.message, refused.field)
    except (psycopg.Error, PoolTimeout) as exc:
        # DB1 away or not as expected: said once, no traceback to the caller.
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return error(503, f"DB1: {first}", None)
    except web.HTTPException as exc:
        if not _is_api(request) or exc.status < 400:
            raise
        return error(exc.status, exc.reason, None)


def build_app(
    settings: Settings,
    *,
    token: str,
    host: str,
    tick_token: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    ticks: TickExpectation | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[json_errors, auth.authenticate], client_max_size=MAX_BODY_BYTES
    )
    app[SETTINGS] = settings
    app[ENDPOINTS] = endpoints(settings)
    app[LOGGER] = logging.getLogger(LOGGER_NAME)
    app[auth.GUARD] = auth.Guard.build(
        token=token, host=host, tick_token=tick_token, allowed_hosts=allowed_hosts
    )
    app[tick.EXPECTATION] = ticks or TickExpectation()
    api.install(app)
    metrics.install(app)
    tick.install(app)
    openapi.install(app)
    dashboard.install(app, settings)
    return app
