"""The admin dashboard: the page at `/`, its assets, and its event stream.

The page is a shell with no data in it, so it is served without the token;
everything it shows arrives over `/api/events` and the admin API, which the
auth middleware guards. Assets ship inside the package (uPlot included), so
the page works on a machine that cannot reach the internet.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from aiohttp import web

from intake_cli.faces.serve import events, tick
from intake_cli.platform.config import Settings

STATIC = resources.files("intake_cli.faces.serve") / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
# Plain names only: no "..", no hidden files, no backslashes or encoded tricks.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# The page runs only its own files; even a string that slipped past the
# text-only rendering could not load or run a script.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _content_type(name: str) -> str | None:
    if name == "LICENSE":
        return CONTENT_TYPES[".txt"]
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:]) if dot > 0 else None


def asset(path: str) -> tuple[bytes, str] | None:
    """A packaged file and its content type, or None for anything not plainly one of ours."""
    parts = path.split("/")
    if not parts or not all(_SEGMENT.match(part) for part in parts):
        return None
    kind = _content_type(parts[-1])
    if kind is None:
        return None
    node: Traversable = STATIC
    for part in parts:
        node = node / part
    if not node.is_file():
        return None
    return node.read_bytes(), kind


class Assets:
    """Packaged files, read once: they cannot change while the server runs."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[bytes, str] | None] = {}

    def get(self, path: str) -> tuple[bytes, str] | None:
        if path not in self._cache:
            found = asset(path)
            if found is None:
                return None  # not cached: a stream of misses must not grow memory
            self._cache[path] = found
        return self._cache[path]


def install(app: web.Application, settings: Settings) -> None:
    """Add `GET /`, `GET /static/{path}` and `GET /api/events` to the serve app."""
    assets = Assets()
    tick_watch = app[tick.WATCH]

    def tick_state(conn: psycopg.Connection) -> dict[str, Any]:
        tick_watch.read_job(conn)
        return tick_watch.state()

    hub = events.Hub(settings, tick_state)
    app[events.HUB] = hub
    app.cleanup_ctx.append(hub.lifespan)

    async def close_streams(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(close_streams)

    async def page(_request: web.Request) -> web.Response:
        found = assets.get("index.html")
        if found is None:  # a broken install, said plainly
            raise web.HTTPInternalServerError(text="dashboard page missing from the package")
        body, kind = found
        return web.Response(
            body=body,
            headers={"Content-Type": kind, "Cache-Control": "no-cache", **SECURITY_HEADERS},
        )

    async def static(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound(text="not found")
        body, kind = found
        return web.Response(
            body=body,
            headers={
                "Content-Type": kind,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.router.add_get("/", page)
    app.router.add_get("/static/{path:.+}", static)
    app.router.add_get("/api/events", events.stream)
