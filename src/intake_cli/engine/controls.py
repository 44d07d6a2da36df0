"""Live controls: pause or resume a pool, change its settings, without restarting anything.

Workers re-read engine_config before every batch and claims read it on
every call, so a change here takes effect at the next batch or claim.
`intake up` makes engine_config match intake.yaml again.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from intake_cli.engine.drain import ledger
from intake_cli.platform import config
from intake_cli.platform.db import connect
from intake_cli.platform.errors import UnknownPool, UsageError
from intake_cli.platform.sqlfiles import queries


def _q(name: str) -> str:
    return queries("controls")[name]


def set_paused(conn: psycopg.Connection, pool_id: str, paused: bool) -> None:
    if conn.execute(_q("set_paused"), {"pool_id": pool_id, "paused": paused}).fetchone() is None:
        raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`key=value` arguments, each checked by the configuration file's rules."""
    if not pairs:
        raise UsageError(NOTHING_NAMED)
    texts: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"expected KEY=VALUE, got {config.redact(pair)[:60]!r}")
        key = key.strip()
        if key in texts:
            # As in intake.yaml: the last one would silently win.
            raise UsageError(f"{key} is given twice: name each setting once")
        texts[key] = text.strip()
    return _checked({key: config.live_setting(key, text) for key, text in texts.items()})


NOTHING_NAMED = "name at least one setting: KEY=VALUE"


def check_changes(values: dict[str, Any]) -> dict[str, Any]:
    """Typed settings (the admin API's JSON body), checked by the same rules as the CLI's."""
    if not values:
        raise UsageError(NOTHING_NAMED)
    return _checked({key: config.live_value(key, value) for key, value in values.items()})


def _checked(changes: dict[str, Any]) -> dict[str, Any]:
    # Both given: refused before connecting; one alone is checked against DB1's row.
    base, ceiling = changes.get("retry_base_seconds"), changes.get("retry_max_seconds")
    if (
        base is not None
        and ceiling is not None
        and (reason := config.check_retry_pair(base, ceiling))
    ):
        raise UsageError(reason)
    return changes


def pools(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every pool's live settings as engine_config holds them, credentials in URLs hidden."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_q("pool_rows")).fetchall()
    return [
        {
            key: config.redact(value) if key == "validation_webhook_url" else value
            for key, value in row.items()
        }
        for row in rows
    ]


def set_settings(
    db1_dsn: str, db2_dsn: str, pool_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply validated changes in one transaction; returns {key: (old, new)}."""
    if "commit_rpc_name" in changes:
        # A name DB2 lacks would fail every commit: refuse it before changing anything.
        with connect(db2_dsn, "DB2") as conn:
            ledger.check_rpc(conn, ledger.RpcName.parse(changes["commit_rpc_name"]))
    with connect(db1_dsn, "DB1") as conn, conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(_q("pool_row"), {"pool_id": pool_id}).fetchone()
        if row is None:
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
        # The pair as it will be after the change (the row is locked until commit).
        after = row | changes
        base, ceiling = after["retry_base_seconds"], after["retry_max_seconds"]
        if reason := config.check_retry_pair(float(base), float(ceiling)):
            raise UsageError(f"pool {pool_id}: {reason} (after this change)")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(key), sql.Placeholder(key)) for key in changes
        )
        conn.execute(
            sql.SQL(
                "update intake.engine_config set {}, updated_at = now() where pool_id = {}"
            ).format(assignments, sql.Placeholder("pool_id")),
            {**changes, "pool_id": pool_id},
        )
    return {key: (row[key], value) for key, value in changes.items()}
