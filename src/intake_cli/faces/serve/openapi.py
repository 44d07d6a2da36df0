"""`GET /api/openapi.json`: the admin API's OpenAPI 3.1 description, kept by hand beside
this module (a test checks that every route the app serves is in it)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from intake_cli.faces.serve.replies import ok

SPEC = Path(__file__).with_name("openapi.json")


@cache
def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text(encoding="utf-8"))


async def get_spec(request: web.Request) -> web.Response:
    return ok(spec())


def install(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", get_spec)
