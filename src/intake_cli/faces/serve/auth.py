"""Who may call the admin API: a bearer token from the environment, or nobody but local users.

Every path under /api/ needs `Authorization: Bearer <token>` when a token is
configured. /metrics is open on loopback (a local Prometheus agent scrapes
it) and needs the token otherwise. The dashboard's page shell (`/`,
`/static/`) holds no data and is always open; the page sends the token on
its own requests.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from intake_cli.faces.serve.replies import error
from intake_cli.platform.errors import UsageError

TOKEN_ENV = "INTAKE_ADMIN_TOKEN"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name other than localhost may resolve to anything: not loopback.
        return False


def token_from_env() -> str | None:
    value = os.environ.get(TOKEN_ENV)
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{TOKEN_ENV} is set but empty: give it a secret, or unset it")
    return value


def check_start(host: str, token: str | None) -> str | None:
    """Refuse an open API off loopback; on loopback, the warning to print (or None)."""
    if token is not None:
        return None
    if not is_loopback(host):
        raise UsageError(
            f"refusing to serve on {host} without a token: anyone who reaches it could "
            f"pause pools and replay or purge dead letters. Set {TOKEN_ENV}, "
            "or bind to 127.0.0.1"
        )
    return (
        f"warning: {TOKEN_ENV} is not set: the admin API on {host} is open to every "
        "local user of this machine"
    )


@dataclass(frozen=True)
class Guard:
    token: str | None
    loopback: bool

    def presented(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if self.token is None or scheme.lower() != "bearer":
            return False
        # Constant time: the comparison must not tell how much of a guess was right.
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def who(self, request: web.Request) -> str | None:
        """ "token" or "loopback" when the request may go on, None when it must not."""
        path = request.path
        if path == "/api" or path.startswith("/api/"):
            if self.token is None:
                return "loopback"
            return "token" if self.presented(request) else None
        if path == "/metrics":
            if self.loopback:
                return "token" if self.presented(request) else "loopback"
            return "token" if self.presented(request) else None
        return "open"


GUARD = web.AppKey("guard", Guard)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    who = request.app[GUARD].who(request)
    if who is None:
        return error(
            401,
            "missing or wrong bearer token (Authorization: Bearer <INTAKE_ADMIN_TOKEN>)",
            None,
            headers={"WWW-Authenticate": 'Bearer realm="intake"'},
        )
    request["who"] = who
    return await handler(request)
