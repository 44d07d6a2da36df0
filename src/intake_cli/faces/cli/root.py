"""The one Typer app every command module registers on, its global options,
the consoles, and `main` (errors to one line and an exit code)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import typer
from rich.console import Console

from intake_cli.platform import config
from intake_cli.platform.db import first_line
from intake_cli.platform.display import markup
from intake_cli.platform.errors import ConnectionFailed, IntakeError

app = typer.Typer(
    help=(
        "Burst-to-Queue intake engine: buyers claim units in an ephemeral Postgres (DB1), "
        "drain workers validate and commit each intent once into the core ledger (DB2)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Much of what is printed comes from outside (webhooks, DB2, files): it goes
# through intake_cli.platform.display, and no `:name:` in it is turned into an emoji.
out = Console(emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

_config_path = config.DEFAULT_CONFIG


@app.callback()
def _global_options(
    config_path: str = typer.Option(
        config.DEFAULT_CONFIG,
        "--config",
        "-c",
        envvar="INTAKE_CONFIG",
        help="Path to intake.yaml (env: INTAKE_CONFIG).",
    ),
) -> None:
    global _config_path
    _config_path = config_path


def load_settings() -> config.Settings:
    return config.load(_config_path)


def given_config_path() -> str:
    """The configuration file this command was given (-c, INTAKE_CONFIG or the default)."""
    return _config_path


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def finite(value: float | None) -> float | None:
    """A float option's check: nan passes every min/max (it compares false), inf passes min."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"expected a finite number, got {value}")
    return value


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def main() -> None:
    reporting_errors(app)


def reporting_errors(job: Callable[[], object]) -> None:
    """Run `job`; intake's own errors and database faults become one line and an exit code.

    `main` runs the whole command so; a process that `--workers` starts runs its job so.
    """
    try:
        job()
    except IntakeError as exc:
        err.print("[bold red]error:[/]", markup(exc, lines=True), highlight=False)
        sys.exit(exc.exit_code)
    except psycopg.Error as exc:
        # A database that fails mid-command (a DB1 crash during `intake burst`,
        # a read-only or restarting server) is a fault to report, not a bug to
        # trace back: what was done before it stands.
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        err.print("[bold red]error:[/] database:", markup(reason, lines=True), highlight=False)
        sys.exit(ConnectionFailed.exit_code)
