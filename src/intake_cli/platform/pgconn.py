"""The one way intake opens a PostgreSQL connection: pooler-safe, always.

Operators point every command at the one connection string they were given,
and on a hosted DB1 that is a transaction-mode pooler (Supavisor's port
6543, PgBouncer): consecutive transactions of one client may run on
different server connections. So nothing intake does may rely on state a
server connection keeps between transactions:

- no server-side prepared statements: psycopg prepares a query it has run
  five times, and another client's transaction then finds `_pg3_0` already
  there, or missing, or bound to another query (`prepare_threshold=None`);
- no session settings (`set local` inside the transaction instead), no
  LISTEN, no session advisory locks (`pg_advisory_xact_lock`), temporary
  tables only `on commit drop` inside one transaction.

`tests/unit/test_pooler_safe.py` fails if a connection is opened anywhere
else in the package.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

# Merged into every connection's arguments; a caller cannot override it.
POOLER_SAFE: dict[str, Any] = {"prepare_threshold": None}


def _safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, **POOLER_SAFE}


def open_sync(dsn: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection:
    """A psycopg connection (use it as a context manager, as psycopg.connect's)."""
    return psycopg.connect(dsn, **_safe({"autocommit": autocommit, **kwargs}))


async def open_async(
    dsn: str, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, **_safe({"autocommit": autocommit, **kwargs}))


def async_pool(
    dsn: str, *, kwargs: dict[str, Any] | None = None, **options: Any
) -> AsyncConnectionPool:
    """An AsyncConnectionPool whose every connection is pooler-safe."""
    return AsyncConnectionPool(dsn, kwargs=_safe(kwargs or {}), **options)
