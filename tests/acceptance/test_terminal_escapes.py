"""Text from outside never drives the operator's terminal.

A webhook declines and fails with reasons full of escape sequences, a buyer's
id carries a bidi override and rich markup, a dead letter, the worker
registry and DB1's own records were written by somebody hostile, and a
configuration file and a DSN hold the same. Every command that shows them
(`drain --log-format text`, `dlq list/show/replay`, `status`, `watch`,
`claim`, and the error `main()` prints) must show them escaped: no raw ESC,
BEL, C1 CSI or bidi override reaches stdout or stderr, the escaped form does,
and `[red]` is printed as written, not taken for a style.
"""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest
from psycopg.types.json import Jsonb

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import make_event
from tests.conftest import intake, pool_spec, write_config

# Retitles the terminal, clears it, styles the rest red (rich), reverses it
# (bidi), opens a C1 CSI, and overwrites the line (CR, backspace).
HOSTILE = "\x1b]0;owned\x07\x1b[2J[red]x[/]\u202eevil\x9b31m\rover\x08"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\x08")
# What an operator sees of HOSTILE, piece by piece (the webhook client folds
# the CR of a webhook's reason into a space; everything else is shown).
SHOWN = ("\\x1b]0;owned\\x07\\x1b[2J", "[red]x[/]", "\\u202eevil\\x9b31m", "over\\x08")
USER_PREFIX = "buyer-[red]u[/]-\u202e"
# Wide enough that rich wraps no cell: each escape is checked whole.
WIDE = {"COLUMNS": "1000"}


def _intake(*args: str, config, expect: int = 0) -> str:
    proc = intake(*args, config=config, env=WIDE)
    assert proc.returncode == expect, f"{args} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return _checked(proc)


def _checked(proc: subprocess.CompletedProcess[str]) -> str:
    shown = proc.stdout + proc.stderr
    raw = [repr(c) for c in RAW if c in shown]
    assert not raw, f"{proc.args[1:]} let {', '.join(raw)} through:\n{shown[-3000:]!r}"
    return shown


def _assert_shows(shown: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in shown, f"{fragment!r} not in:\n{shown[-3000:]}"


@pytest.mark.slow
def test_outside_text_is_shown_escaped_everywhere(workdir, db1_dsn, db2_dsn):
    with WebhookServer(decline_share=1.0, decline_reason=HOSTILE, fail_reason=HOSTILE) as hook:
        event = make_event(workdir, db1_dsn, db2_dsn, hook.url, 10, max_retries=0)
        config = event.config

        # A declined payment: its reason goes to the text log.
        event.claim(1, prefix=USER_PREFIX)
        declined = _intake("drain", "--once", "--log-format", "text", config=config)
        _assert_shows(declined, "rejected", *SHOWN)

        # A failing webhook (no retries left): dead-lettered with its reason.
        hook.script(decline_share=0.0, fail_first=100)
        event.claim(1, prefix=f"{USER_PREFIX}-2")
        failed = _intake("drain", "--once", "--log-format", "text", config=config)
        _assert_shows(failed, "dead_lettered", *SHOWN)

    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # A dead letter written by somebody else, a CR kept whole in it.
        forged = conn.execute(
            "select * from pgmq.send('intents_dlq', %s)",
            (
                Jsonb(
                    {
                        "intent": {
                            "idempotency_key": "key\x1b[2J",
                            "pool_id": "pool\x9b1m",
                            "user_id": HOSTILE,
                        },
                        "state": "\u202equeued",
                        "attempts": 1,
                        "last_error": HOSTILE,
                    }
                ),
            ),
        ).fetchone()[0]
        conn.execute("update intake.pgmq_install set version = %s", (HOSTILE,))
        conn.execute(
            "insert into intake.inventory_rebuilds (pool_id, trigger, units, locked, consumed,"
            " released, high_water, intents, conflicts, seconds)"
            " values ('drop', %s, 10, 0, 0, 10, 10, 0, 0, 0.1)",
            (HOSTILE,),
        )
        conn.execute(
            "insert into intake.workers (worker_id, hostname, pid, pool_filter, concurrency)"
            " values ('forged', %s, 4242, %s, 1)",
            ("h\x1b]0;t\x07", "[b]f"),
        )

    listed = _intake("dlq", "list", config=config)
    _assert_shows(listed, *SHOWN, "\\x0dover", "pool\\x9b1m", "\\u202equeued")
    _assert_shows(listed, "buyer-[red]u[/]-\\u202e-2-0")

    # Not an intent intake wrote: never replayed, shown as it is, escaped.
    replayed = _intake("dlq", "replay", "--dry-run", "--all", config=config)
    _assert_shows(replayed, "pool\\x9b1m key\\x1b[2J (\\u202equeued)")
    refused = _intake("dlq", "replay", str(forged), config=config, expect=2)
    _assert_shows(refused, f"dead letter {forged} cannot be read", '"\\u202equeued" is not one')

    status = _intake("status", config=config)
    _assert_shows(status, *SHOWN)

    frame = _intake("watch", "--once", config=config)
    _assert_shows(frame, "h\\x1b]0;t\\x07:4242", "[b]f")

    claimed = _intake("claim", "drop", "claimer-[red]c[/]-\u202e", config=config)
    _assert_shows(claimed, "user_id=claimer-[red]c[/]-\\u202e")

    # JSON output escapes by itself, and stays whole.
    shown = _intake("dlq", "show", str(forged), config=config)
    assert json.loads(shown)["last_error"] == HOSTILE
    _assert_shows(shown, "\\u001b]0;owned\\u0007")
    letters = json.loads(_intake("dlq", "list", "--json", config=config))
    assert [letter["last_error"] for letter in letters][-1] == HOSTILE
    assert json.loads(_intake("status", "--json", config=config))["pgmq"]["version"] == HOSTILE


def test_error_messages_show_outside_text_escaped(workdir, db1_dsn, db2_dsn):
    # A configuration file that names a hostile pool: exit 2, the value escaped.
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec(HOSTILE)])
    proc = intake("status", config=config, env=WIDE)
    assert proc.returncode == 2, proc.stderr
    _assert_shows(_checked(proc), "error:", *SHOWN[:3])

    # A DSN part, echoed back by the server and by intake's own message.
    dsn = psycopg.conninfo.make_conninfo(db1_dsn, dbname=HOSTILE)
    config = write_config(workdir, dsn, db2_dsn, [pool_spec()])
    proc = intake("dlq", "list", config=config, env=WIDE)
    assert proc.returncode == 3, proc.stderr
    _assert_shows(_checked(proc), "error:", "cannot connect to DB1", *SHOWN[:3])
