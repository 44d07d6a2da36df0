"""How the admin API answers: JSON bodies, and errors as `{"error": ..., "field": ...}`.

The error text is the CLI's own message for the same rule; `field` names the
part of the request at fault (a path parameter, a query parameter or a body
key) so a client can point at it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from intake_cli.platform.errors import (
    ConfigError,
    ConnectionFailed,
    IntakeError,
    LedgerContractError,
    NotProvisioned,
    UnknownDeadLetter,
    UnknownPool,
)


class ApiError(Exception):
    """A request the API refuses; nothing was changed."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def dumps(data: Any) -> str:
    # default=str: timestamps and decimals from the database.
    return json.dumps(data, default=str, sort_keys=True)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": message, "field": field}, status=status, headers=headers, dumps=dumps
    )


def from_intake(exc: IntakeError, field: str | None = None) -> ApiError:
    """The HTTP form of an engine error: its message, a status that fits, the field at fault."""
    if isinstance(exc, UnknownPool | UnknownDeadLetter):
        return ApiError(404, str(exc), field)
    if isinstance(exc, ConfigError):
        # "key: reason" lines, as `intake config set` prints them.
        message = "; ".join(exc.problems)
        key = exc.problems[0].partition(":")[0] if exc.problems else field
        return ApiError(422, message, key)
    if isinstance(exc, LedgerContractError):
        return ApiError(422, str(exc), field or "commit_rpc_name")
    if isinstance(exc, NotProvisioned | ConnectionFailed):
        return ApiError(503, str(exc), None)
    return ApiError(422, str(exc), field)
