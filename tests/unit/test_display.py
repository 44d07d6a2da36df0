"""intake_cli.platform.display: outside text shown on a terminal, escaped."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest
from rich.console import Console

from intake_cli.engine import telemetry
from intake_cli.faces import watch
from intake_cli.platform.display import cell, markup, safe
from intake_cli.platform.logs import JsonFormatter, TextFormatter

CASES = [
    # (outside text, what the operator sees)
    ("card declined", "card declined"),
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # OSC: retitles the terminal
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # CSI: clears the screen
    ("\x9b2J", "\\x9b2J"),  # the one-byte (C1) CSI
    ("\x85 \x80 \x9f", "\\x85 \\x80 \\x9f"),  # every C1 control
    ("paid\rdeclined", "paid\\x0ddeclined"),  # CR overwrites the line
    ("paid\x08\x08\x08\x08", "paid\\x08\\x08\\x08\\x08"),  # backspace
    ("a\x7fb", "a\\x7fb"),  # DEL
    ("a\x00b", "a\\x00b"),
    ("one\ntwo\tthree", "one\\x0atwo\\x09three"),  # would forge a line or a cell
    ("\u202eevil\u202c", "\\u202eevil\\u202c"),  # bidi override and pop
    ("\u202a\u202b\u202d", "\\u202a\\u202b\\u202d"),  # embeddings, the other override
    ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),  # isolates
    ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),  # bidi marks
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
    ("\ud800", "\\ud800"),  # a lone surrogate: no encoder would take it
    ("café 東京 😀 ñ", "café 東京 😀 ñ"),  # ordinary Unicode stays
    ("[red]x[/] \\x1b", "[red]x[/] \\x1b"),  # markup is not safe's business
    (42, "42"),
    (None, "None"),
]


@pytest.mark.parametrize(("raw", "shown"), CASES)
def test_safe_escapes_controls_and_keeps_ordinary_text(raw, shown):
    assert safe(raw) == shown


def test_every_control_character_is_escaped():
    unsafe = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x202E, 0x2066]
    for code in unsafe:
        shown = safe(chr(code))
        assert shown.startswith("\\") and shown.isprintable() and shown.isascii(), hex(code)


def test_lines_keeps_newlines_only():
    assert safe("a\nb\x1b[2J\r\tc", lines=True) == "a\nb\\x1b[2J\\x0d\\x09c"


def _rendered(*renderables: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, emoji=False).print(*renderables)
    return buffer.getvalue()


def test_markup_prints_literally_through_rich():
    hostile = "[red]x[/] [bold]y\x1b[2J [link=http://evil]z[/link]"
    shown = _rendered(f"reason: {markup(hostile)}")
    assert shown.strip() == "reason: [red]x[/] [bold]y\\x1b[2J [link=http://evil]z[/link]"


def test_cell_is_never_read_as_markup():
    assert _rendered(cell("[red]x[/]\u202e")).strip() == "[red]x[/]\\u202e"


def test_text_log_lines_escape_message_and_fields():
    record = logging.LogRecord("intake", logging.INFO, __file__, 1, "transition", None, None)
    record.fields = {"reason": "HTTP 402: \x1b]0;t\x07\nerror fake line", "user\x1b": "u\u202e"}
    line = TextFormatter().format(record)
    assert line == (
        "info    transition reason=HTTP 402: \\x1b]0;t\\x07\\x0aerror fake line user\\x1b=u\\u202e"
    )


def test_watch_frame_shows_what_db1_holds_literally():
    pool = {
        # The pool column is 14 wide.
        "pool_id": "\x9b[b]\u202e",
        "inventory": 10,
        "available_slots": 9,
        "locked": 1,
        "consumed": 0,
        "rejected": 0,
        "dead_lettered": 0,
        "paused": False,
        "recovering": False,
        "processing_velocity": 0,
        "webhook_error_rate": None,
        "queue_depth": 1,
        "in_flight": 0,
        "dlq_depth": 0,
        "oldest_msg_age_s": 1,
        "age_s": 1,
    }
    worker = telemetry.WorkerView(
        worker_id="w1",
        hostname="h\x1b[2J",
        pid=7,
        pool_filter="[red]y[/]",
        concurrency=1,
        batches=0,
        committed=0,
        rejected=0,
        retried=0,
        dead_lettered=0,
        log_lines_dropped=0,
        heartbeat_age_s=1.0,
        stopped=False,
    )
    snap = watch.Snapshot(
        taken_at=datetime.now(UTC),
        schedule=telemetry.ScheduleMode("none", None, "not scheduled"),
        pools=[pool],
        velocity=[],
        workers=[worker],
    )
    buffer = io.StringIO()
    watch.print_once(snap, Console(file=buffer, width=200))
    shown = buffer.getvalue()
    assert not {"\x1b", "\x9b", "\u202e"} & set(shown)
    assert "\\x9b[b]\\u202e" in shown
    assert "h\\x1b[2J:7" in shown
    assert "[red]y[/]" in shown


def test_json_log_lines_are_already_safe():
    record = logging.LogRecord("intake", logging.ERROR, __file__, 1, "dead_lettered", None, None)
    record.fields = {"error": "\x1b]0;t\x07\x9b\u202e\r[red]x[/]"}
    line = JsonFormatter().format(record)
    assert line.isascii() and line.isprintable()
    assert json.loads(line)["error"] == "\x1b]0;t\x07\x9b\u202e\r[red]x[/]"
