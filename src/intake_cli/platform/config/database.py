"""The db1 and db2 sections: where each database lives and how intake treats it."""

from __future__ import annotations

from typing import Any

from intake_cli.platform.config.dsn import _dsn
from intake_cli.platform.config.names import check_rpc_name
from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.settings import DatabaseSettings
from intake_cli.platform.config.validate import _mapping, _seconds, _string

# What the drain's replication fence waits for (engine/fence.py, docs/failover.md).
REPLICATION_FENCES = ("all", "synchronous", "off")


def _database(
    problems: _Problems, path: str, raw: Any, *, ledger: bool = False
) -> DatabaseSettings:
    keys = (
        {"dsn", "pgenv", "install_example_ledger", "commit_timeout_seconds", "sold_query"}
        if ledger
        else {"dsn", "pgenv", "replication_fence"}
    )
    spec = _mapping(problems, path, raw, keys)
    fence = spec.get("replication_fence", DatabaseSettings.replication_fence)
    if fence not in REPLICATION_FENCES:
        problems.add(
            f"{path}.replication_fence",
            f"expected one of {', '.join(REPLICATION_FENCES)}, got {_show(fence)}",
        )
        fence = DatabaseSettings.replication_fence
    timeout = DatabaseSettings.commit_timeout_seconds
    if spec.get("commit_timeout_seconds") is not None:
        timeout = (
            _seconds(
                problems, f"{path}.commit_timeout_seconds", spec["commit_timeout_seconds"], 3600.0
            )
            or timeout
        )
    dsn_raw = spec.get("dsn")
    pgenv = spec.get("pgenv", False)
    if not isinstance(pgenv, bool):
        problems.add(f"{path}.pgenv", f"expected true or false, got {_show(pgenv)}")
        pgenv = False
    install = spec.get("install_example_ledger")
    if install is not None and not isinstance(install, bool):
        problems.add(
            f"{path}.install_example_ledger", f"expected true or false, got {_show(install)}"
        )
        install = None
    sold_query = None
    if spec.get("sold_query") is not None:
        # Checked like a commit RPC name: it reaches SQL only quoted by psycopg.sql.
        sold_query = _string(problems, f"{path}.sold_query", spec["sold_query"])
        if sold_query is not None and (reason := check_rpc_name(sold_query)):
            problems.add(f"{path}.sold_query", reason)
            sold_query = None
    if dsn_raw is None:
        return DatabaseSettings(
            pgenv=pgenv,
            install_example_ledger=install,
            commit_timeout_seconds=timeout,
            sold_query=sold_query,
            replication_fence=fence,
        )
    if not isinstance(dsn_raw, str):
        problems.add(f"{path}.dsn", f"expected a connection string, got {_show(dsn_raw)}")
        return DatabaseSettings()
    dsn = _dsn(problems, f"{path}.dsn", dsn_raw)
    if pgenv and dsn:
        problems.add(path, "set either dsn or pgenv, not both")
    # An empty DSN after interpolation (${DB1_DSN:-}) means "not configured".
    return DatabaseSettings(
        dsn=dsn or None,
        pgenv=pgenv,
        install_example_ledger=install,
        commit_timeout_seconds=timeout,
        sold_query=sold_query,
        replication_fence=fence,
    )
