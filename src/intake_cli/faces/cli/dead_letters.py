"""`intake dlq`: inspect, replay and purge dead-lettered intents."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from intake_cli.engine import dlq as dead_letters
from intake_cli.faces.cli.root import JsonOption, app, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import cell, markup
from intake_cli.platform.errors import IntakeError, UsageError

dlq_app = typer.Typer(help="Inspect and recover dead-lettered intents.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _dlq_connection() -> tuple[config.Settings, Any]:
    settings = load_settings()
    return settings, connect(endpoints(settings).db1, "DB1")


# pgmq message ids are bigint: anything outside is refused before DB1 is asked.
BIGINT_MAX = 2**63 - 1
# A cell of the terminal table shows this much of a value; --json shows all of it.
CELL_CHARS = 200


def _short(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


def _state_cell(letter: dead_letters.DeadLetter) -> Text:
    state = cell(_short(letter.state))
    if letter.readable:
        return state
    return Text.assemble(("unreadable", "bold red"), " ", state)


@dlq_app.command("list")
def dlq_list(
    limit: int | None = typer.Option(
        None, "--limit", min=1, max=1_000_000, help="Show at most this many."
    ),
    as_json: bool = JsonOption,
) -> None:
    """List dead letters: id, pool, user, state reached, attempts, last error.

    A message intake cannot read as a dead letter is listed too, marked
    unreadable with what is wrong (with --json: "readable": false, its
    "problems" and its "message_text").
    """
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
        # All but the numbers come from the message, written by whoever wrote it.
        table.add_row(
            str(letter.msg_id),
            cell(_short(letter.field("pool_id"))),
            cell(_short(letter.field("user_id"))),
            _state_cell(letter),
            "" if letter.attempts is None else str(letter.attempts),
            cell(_short(letter.last_error)),
        )
    out.print(table)
    unreadable = [letter for letter in letters if not letter.readable]
    for letter in unreadable:
        out.print(markup(f"  {letter.msg_id} unreadable: {'; '.join(letter.problems)}"))
    if unreadable:
        out.print(
            f"{len(unreadable)} dead letters cannot be read as intake writes them: "
            "they are never replayed (`intake dlq show ID` shows one whole)"
        )


MsgIdArgument = typer.Argument(..., min=1, max=BIGINT_MAX, help="Dead letter id (from `dlq list`).")


@dlq_app.command("show")
def dlq_show(msg_id: int = MsgIdArgument) -> None:
    """Show one dead letter in full, with what DB1 knows of its intent (JSON)."""
    settings, connection = _dlq_connection()
    with connection as conn:
        print_json(dead_letters.show(conn, settings.dlq_name, msg_id))


@dlq_app.command("replay")
def dlq_replay(
    msg_ids: list[int] | None = typer.Argument(
        None, min=1, max=BIGINT_MAX, help="Dead letter ids to replay."
    ),
    replay_all: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
    as_json: bool = JsonOption,
) -> None:
    """Put dead letters back on the queue, with their idempotency key and state.

    A validated intent is not sent to the webhook again: only its commit is
    retried. Replay once downstream (webhook, DB2) has recovered. A dead
    letter intake cannot read stays where it is, with the reason; the others
    are replayed. Exit 1 when a named one stayed, 0 with --all.
    """
    selected = dead_letters.check_selection(msg_ids, replay_all)
    settings, connection = _dlq_connection()
    with connection as conn:
        report = dead_letters.replay(
            conn, settings.queue_name, settings.dlq_name, selected, dry_run=dry_run
        )
    if as_json:
        print_json(report.as_json())
    else:
        verb = "would replay" if dry_run else "replayed"
        out.print(f"{verb} {len(report.replayed)} intents")
        for item in report.replayed:
            after = f" → message {item['msg_id_after']}" if item["msg_id_after"] else ""
            out.print(
                markup(
                    f"  {item['msg_id']} {item['pool_id']} {item['idempotency_key']} "
                    f"({item['state']}){after}"
                )
            )
        if report.refused:
            out.print(f"not replayed: {len(report.refused)} unreadable dead letters")
        for item in report.refused:
            out.print(
                markup(
                    f"  {item['msg_id']} {_short(item['pool_id'])} "
                    f"{_short(item['idempotency_key'])} ({_short(item['state'])}): "
                    f"{'; '.join(item['problems'])}"
                )
            )
    if report.refused and selected is not None:
        ids = ", ".join(str(item["msg_id"]) for item in report.refused)
        raise IntakeError(
            f"dead letters {ids} were not replayed: intake cannot read them "
            "(`intake dlq show ID` shows one whole)"
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
