"""`intake dlq`: inspect, replay and purge dead-lettered intents."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from intake_cli.engine import dlq as dead_letters
from intake_cli.faces.cli.root import JsonOption, app, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import cell, markup
from intake_cli.platform.errors import UsageError

dlq_app = typer.Typer(help="Inspect and recover dead-lettered intents.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _dlq_connection() -> tuple[config.Settings, Any]:
    settings = load_settings()
    return settings, connect(endpoints(settings).db1, "DB1")


@dlq_app.command("list")
def dlq_list(
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=1_000_000, help="Show at most this many."
    ),
    as_json: bool = JsonOption,
) -> None:
    """List dead letters: id, pool, user, state reached, attempts, last error."""
    settings, connection = _dlq_connection()
    with connection as conn:
        letters = dead_letters.list_letters(conn, settings.dlq_name, limit)
    if as_json:
        print_json([letter.as_json() for letter in letters])
        return
    table = Table(title=f"dead letters in {markup(settings.dlq_name)}")
    for column in ("id", "pool", "user", "state", "attempts", "last error"):
        table.add_column(column)
    for letter in letters:
        data = letter.as_json()
        # All but the numbers come from the message, written by whoever wrote it.
        table.add_row(
            str(letter.msg_id),
            cell(data["pool_id"]),
            cell(data["user_id"]),
            cell(letter.state),
            str(letter.attempts),
            cell(letter.last_error or ""),
        )
    out.print(table)


@dlq_app.command("show")
def dlq_show(msg_id: int = typer.Argument(..., help="Dead letter id (from `dlq list`).")) -> None:
    """Show one dead letter in full, with what DB1 knows of its intent (JSON)."""
    settings, connection = _dlq_connection()
    with connection as conn:
        print_json(dead_letters.show(conn, settings.dlq_name, msg_id))


@dlq_app.command("replay")
def dlq_replay(
    msg_ids: list[int] | None = typer.Argument(None, help="Dead letter ids to replay."),
    replay_all: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
    as_json: bool = JsonOption,
) -> None:
    """Put dead letters back on the queue, with their idempotency key and state.

    A validated intent is not sent to the webhook again: only its commit is
    retried. Replay once downstream (webhook, DB2) has recovered.
    """
    selected = dead_letters.check_selection(msg_ids, replay_all)
    settings, connection = _dlq_connection()
    with connection as conn:
        replayed = dead_letters.replay(
            conn, settings.queue_name, settings.dlq_name, selected, dry_run=dry_run
        )
    if as_json:
        print_json(replayed)
        return
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {len(replayed)} intents")
    for item in replayed:
        after = f" → message {item['msg_id_after']}" if item["msg_id_after"] else ""
        out.print(
            markup(
                f"  {item['msg_id']} {item['pool_id']} {item['idempotency_key']} "
                f"({item['state']}){after}"
            )
        )


@dlq_app.command("purge")
def dlq_purge(
    yes: bool = typer.Option(False, "--yes", help="Confirm: the dead letters are deleted."),
) -> None:
    """Delete every dead letter. Export them first: `intake dlq list --json > dead.json`."""
    if not yes:
        raise UsageError(dead_letters.PURGE_RULE)
    settings, connection = _dlq_connection()
    with connection as conn:
        purged = dead_letters.purge(conn, settings.dlq_name)
    out.print(f"purged {purged} dead letters from {markup(settings.dlq_name)}")
