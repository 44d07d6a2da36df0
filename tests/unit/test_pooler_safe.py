"""Every connection intake opens is pooler-safe because it is opened in one
place, platform/pgconn.py (no server-side prepared statements). A new
`psycopg.connect` or pool anywhere else in the package fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from intake_cli.platform import pgconn

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "intake_cli"
SQL = Path(__file__).resolve().parents[2] / "sql"
HOME = PACKAGE / "platform" / "pgconn.py"
# Whatever opens a connection: psycopg.connect, (Async)Connection.connect, the pools.
OPENERS = {"Connection", "AsyncConnection", "psycopg"}
POOLS = {"ConnectionPool", "AsyncConnectionPool", "NullConnectionPool", "AsyncNullConnectionPool"}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _openings(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "connect":
                if _name(func.value) in OPENERS:
                    lines.append(node.lineno)
            elif _name(func) in POOLS:
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("psycopg")
            and any(alias.name == "connect" for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_connections_are_opened_only_in_pgconn():
    found = {
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if path != HOME
        for line in _openings(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert found == set(), "open connections with intake_cli.platform.pgconn instead"


def test_the_guard_sees_each_way_of_opening_one():
    code = (
        "import psycopg\nfrom psycopg_pool import AsyncConnectionPool\n"
        "psycopg.connect('')\npsycopg.AsyncConnection.connect('')\n"
        "AsyncConnectionPool('')\nfrom psycopg import connect\n"
    )
    assert sorted(_openings(ast.parse(code))) == [3, 4, 5, 6]


@pytest.mark.parametrize(
    "opener",
    [
        lambda: pgconn.open_sync("host=x", prepare_threshold=5, connect_timeout=1),
        lambda: pgconn.async_pool("host=x", kwargs={"prepare_threshold": 0}, open=False),
    ],
)
def test_no_caller_can_turn_prepared_statements_back_on(monkeypatch, opener):
    seen = {}
    monkeypatch.setattr(pgconn.psycopg, "connect", lambda dsn, **kw: seen.update(kw))
    made = opener()
    kwargs = seen or made.kwargs
    assert kwargs["prepare_threshold"] is None


def test_no_session_state_in_the_sql():
    """Session-scoped advisory locks, LISTEN and session-wide SET outlive a
    transaction, which a transaction-mode pooler does not keep."""
    lock = r"pg_(try_)?advisory_lock(_shared)?\s*\("
    in_sql = re.compile(
        lock + r"|^\s*listen\s+\w|^\s*set\s+session\b", re.IGNORECASE | re.MULTILINE
    )
    found = [
        f"{path.relative_to(SQL.parent)}: {m.group(0).strip()}"
        for path in [*SQL.rglob("*.sql"), *SQL.rglob("*.j2"), *PACKAGE.rglob("*.py")]
        for m in (in_sql if path.suffix != ".py" else re.compile(lock, re.I)).finditer(
            path.read_text(encoding="utf-8")
        )
    ]
    assert found == []
