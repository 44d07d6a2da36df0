"""One malformed message never breaks the dead-letter list, nor anything else.

DB1's owner, anything with access to DB1, or an older intake can put a
message in the DLQ (or the queue) that is not what intake writes: a field
of another type or form, a body that is not an object, nesting a thousand
levels deep, a number of 5,000 digits, text full of escape sequences.
`dlq list/show/replay/purge`, the admin API, `status`, `watch` and
`down --export` show what they can and mark what they cannot read (with
the message exactly as DB1 holds it); a replay leaves such a letter where
it is, with the reason, and goes on with the others. In the queue, the
drain refuses it into the DLQ with the reason and commits the rest.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, _rows, make_event, wait_for
from tests.acceptance.serve_support import serving
from tests.acceptance.test_terminal_escapes import HOSTILE, RAW
from tests.conftest import intake as cli

DEEP = "[" * 2000 + "]" * 2000
HUGE_INT = "9" * 5000
HUGE_DECIMAL = "1" + "0" * 400 + ".5"
KEY = "00000000-0000-4000-8000-0000000000aa"
WIDE = {"COLUMNS": "1000"}


def intent_json(**changes: Any) -> dict[str, Any]:
    """An intent as the claim path writes it, with `changes`."""
    return {
        "v": 1,
        "idempotency_key": KEY,
        "pool_id": "drop",
        "user_id": "buyer-x",
        "resource_id": "00000000-0000-4000-8000-0000000000bb",
        "unit_no": 9,
        "claimed_at": "2026-01-01T00:00:00+00:00",
        **changes,
    }


def letter_json(intent: Any = None, **changes: Any) -> str:
    body = {
        "intent": intent_json() if intent is None else intent,
        "state": "queued",
        "attempts": 1,
        "last_error": "webhook: 503",
        "dead_at": "2026-01-01T00:00:01+00:00",
        **changes,
    }
    return json.dumps(body)


def raw(template: str, value: str) -> str:
    """A letter whose one field is JSON text Python would not write (too deep, too long)."""
    return template.replace('"@RAW@"', value)


# name → (the message's JSON text, a piece of the problem intake reports)
MALFORMED: dict[str, tuple[str, str]] = {
    "attempts-word": (letter_json(attempts="many"), 'attempts: "many" is not a count'),
    "attempts-negative": (letter_json(attempts=-1), "attempts: -1 is not a count"),
    "attempts-beyond-int": (letter_json(attempts=10**30), "is not a count of attempts"),
    "attempts-decimal": (letter_json(attempts=1.5), "attempts: 1.5 is not a count"),
    "attempts-bool": (letter_json(attempts=True), "attempts: true is not a count"),
    "attempts-huge-int": (raw(letter_json(attempts="@RAW@"), HUGE_INT), "4300 digits"),
    "attempts-huge-decimal": (raw(letter_json(attempts="@RAW@"), HUGE_DECIMAL), "too large"),
    "intent-string": (letter_json(intent="a string"), "intent: a string, not a JSON object"),
    "intent-array": (letter_json(intent=[1, 2]), "intent: an array, not a JSON object"),
    "intent-null": (letter_json(intent=[]).replace("[]", "null"), "intent: null, not a JSON"),
    "intent-deep": (raw(letter_json(intent="@RAW@"), DEEP), "nested deeper than 64 levels"),
    "key-escapes": (
        letter_json(intent_json(idempotency_key="key\x1b[2J")),
        "intent.idempotency_key is not a UUID",
    ),
    "key-number": (
        letter_json(intent_json(idempotency_key=12345)),
        "intent.idempotency_key is not a UUID",
    ),
    "pool-object": (
        letter_json(intent_json(pool_id={"a": 1})),
        "intent.pool_id is not a non-empty string",
    ),
    "user-array": (
        letter_json(intent_json(user_id=["x"])),
        "intent.user_id is not a non-empty string",
    ),
    "resource-word": (
        letter_json(intent_json(resource_id="nope")),
        "intent.resource_id is not a UUID",
    ),
    "unit-huge": (
        raw(letter_json(intent_json(unit_no="@RAW@")), HUGE_INT),
        "4300 digits",
    ),
    "state-bidi": (letter_json(state="\u202equeued"), 'state: "\\u202equeued" is not one of'),
    "state-number": (letter_json(state=7), "state: a number, not one of"),
    "last-error-object": (letter_json(last_error={"code": 1}), "last_error: an object"),
    "dead-at-word": (letter_json(dead_at="yesterday"), 'dead_at: "yesterday" is not a time'),
    "dead-at-number": (letter_json(dead_at=5), "dead_at: 5 is not a timestamp"),
    "body-string": ('"just text"', "message: a string, not a JSON object"),
    "body-array": ("[1, 2, 3]", "message: an array, not a JSON object"),
    "body-null": ("null", "message: null, not a JSON object"),
    "body-number": ("42", "message: a number, not a JSON object"),
    "body-deep": (DEEP, "message: nested deeper than 64 levels"),
}
# Readable, however odd: a 2 MB error, and a buyer and an error full of escapes.
ODD_BUT_READABLE = {
    "huge-error": letter_json(last_error="e" * 2_000_000),
    "hostile-text": letter_json(intent_json(user_id=HOSTILE), last_error=HOSTILE),
}


def send(event: Event, queue: str, texts: list[str]) -> list[int]:
    with psycopg.connect(event.db1, autocommit=True) as conn:
        return [
            conn.execute("select * from pgmq.send(%s, %s::jsonb)", (queue, text)).fetchone()[0]
            for text in texts
        ]


def stored(event: Event, queue: str) -> dict[int, str]:
    """Each message of a queue as DB1 holds it (jsonb's own text)."""
    return dict(_rows(event.db1, f"select msg_id, message::text from pgmq.q_{queue}"))


def intake(*args: str, event: Event, expect: int = 0) -> str:
    """The CLI in this process (tests.conftest.intake, here `cli`), its exit code
    and its output checked; returns stdout."""
    proc = cli(*args, config=event.config, env=WIDE)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"{args} exited {proc.returncode}: {shown[-3000:]}"
    assert "Traceback" not in shown
    raw_chars = [repr(c) for c in RAW if c in shown]
    assert not raw_chars, f"{args} let {raw_chars} through"
    return proc.stdout


@pytest.fixture
def event(workdir, db1_dsn, db2_dsn):
    """Three genuine dead letters (the webhook failed, no retries), then the malformed ones."""
    with WebhookServer(fail_first=1000) as webhook:
        made = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 10, max_retries=0)
        made.claim(3)
        # One batch, in this process: the three fail and, with no retries, die.
        cli("drain", "--once", config=made.config)
        wait_for(lambda: made.queue_depth("intents_dlq") == 3, 30, "3 dead letters")
    return made


@pytest.mark.slow
def test_malformed_dead_letters_are_marked_and_never_hide_the_others(event):
    genuine = sorted(stored(event, "intents_dlq"))
    bad = send(event, "intents_dlq", [text for text, _ in MALFORMED.values()])
    bad_ids = dict(zip(MALFORMED, bad, strict=True))
    odd = send(event, "intents_dlq", list(ODD_BUT_READABLE.values()))
    odd_ids = dict(zip(ODD_BUT_READABLE, odd, strict=True))
    texts = stored(event, "intents_dlq")

    # The list: every letter, in id order; the bad ones marked, with their text whole.
    listed = json.loads(intake("dlq", "list", "--json", event=event))
    assert [item["msg_id"] for item in listed] == sorted(texts)
    by_id = {item["msg_id"]: item for item in listed}
    assert {i for i, item in by_id.items() if not item["readable"]} == set(bad_ids.values())
    for name, msg_id in bad_ids.items():
        item = by_id[msg_id]
        assert any(MALFORMED[name][1] in p for p in item["problems"]), (name, item["problems"])
        assert item["message_text"] == texts[msg_id], name
    for msg_id in genuine:
        assert by_id[msg_id]["problems"] == [] and "message_text" not in by_id[msg_id]
        assert by_id[msg_id]["state"] == "queued" and by_id[msg_id]["attempts"] == 1
    assert by_id[bad_ids["attempts-word"]]["attempts"] is None
    assert by_id[bad_ids["attempts-word"]]["pool_id"] == "drop"
    assert by_id[bad_ids["state-bidi"]]["state"] == "\u202equeued"
    assert by_id[bad_ids["pool-object"]]["pool_id"] is None
    assert by_id[odd_ids["huge-error"]]["last_error"] == "e" * 2_000_000
    assert by_id[odd_ids["hostile-text"]]["user_id"] == HOSTILE

    table = intake("dlq", "list", event=event)
    assert f"{len(MALFORMED)} dead letters cannot be read" in table
    assert f'{bad_ids["attempts-word"]} unreadable: attempts: "many"' in table
    assert "e" * 200 + "…" in table and "e" * 201 not in table

    # show: each one, the bad ones marked; a genuine one with its intent's state.
    shown = json.loads(intake("dlq", "show", str(bad_ids["intent-deep"]), event=event))
    assert shown["readable"] is False and shown["message_text"] == texts[bad_ids["intent-deep"]]
    shown = json.loads(intake("dlq", "show", str(bad_ids["key-escapes"]), event=event))
    assert "intent_state" not in shown and shown["idempotency_key"] == "key\x1b[2J"
    shown = json.loads(intake("dlq", "show", str(genuine[0]), event=event))
    assert shown["readable"] is True and shown["intent_state"]["state"] == "dead"

    # status and watch read none of it, and still answer.
    status = json.loads(intake("status", "--json", event=event))
    assert status["dlq"]["depth"] == len(texts)
    intake("watch", "--once", event=event)

    # Replay: an unreadable one alone is refused and nothing changes.
    bad = bad_ids["attempts-word"]
    err = cli("dlq", "replay", str(bad), config=event.config)
    assert err.returncode == 2, err.stderr
    assert f"dead letter {bad} cannot be read as an intent intake wrote" in err.stderr
    assert 'attempts: "many" is not a count of attempts' in err.stderr
    assert stored(event, "intents_dlq") == texts and event.queue_depth() == 0

    # With a readable one: that one goes, the other stays, exit 1 naming it.
    proc = cli("dlq", "replay", str(genuine[0]), str(bad), config=event.config, env=WIDE)
    assert proc.returncode == 1, proc.stderr
    assert "replayed 1 intents" in proc.stdout
    assert "not replayed: 1 unreadable dead letters" in proc.stdout
    assert f"dead letters {bad} were not replayed" in proc.stderr
    assert event.queue_depth() == 1 and genuine[0] not in stored(event, "intents_dlq")

    # --all: the readable ones go, the unreadable stay and are reported; exit 0.
    report = json.loads(intake("dlq", "replay", "--all", "--json", event=event))
    assert sorted(item["msg_id"] for item in report["replayed"]) == sorted(
        [*genuine[1:], *odd_ids.values()]
    )
    assert sorted(item["msg_id"] for item in report["refused"]) == sorted(bad_ids.values())
    assert all(item["reason"].startswith("dead letter ") for item in report["refused"])
    assert sorted(stored(event, "intents_dlq")) == sorted(bad_ids.values())
    assert event.queue_depth() == 1 + 2 + len(ODD_BUT_READABLE)

    # The export before a teardown holds every message exactly as DB1 had it:
    # those Python cannot read as values are kept as their JSON text.
    queued, dead = stored(event, "intents"), stored(event, "intents_dlq")
    target = event.config.parent / f"export-{event.config.stem}.jsonl"
    intake("down", "--export", str(target), event=event)
    exported = {}
    for line in target.read_text().splitlines():
        record = json.loads(line)
        text = record.get("message_text")
        if text is None:
            text = _rows(event.db2, "select %s::jsonb::text", (json.dumps(record["message"]),))[0][
                0
            ]
        exported[(record["queue"], record["msg_id"])] = text
    assert exported == {
        **{("intents", msg_id): text for msg_id, text in queued.items()},
        **{("intents_dlq", msg_id): text for msg_id, text in dead.items()},
    }


SERVED = ("attempts-word", "body-deep", "intent-string", "key-escapes", "unit-huge")


@pytest.mark.slow
def test_the_admin_api_lists_every_letter_and_marks_the_unreadable(event):
    genuine = sorted(stored(event, "intents_dlq"))
    bad = send(event, "intents_dlq", [MALFORMED[name][0] for name in SERVED])
    bad_ids = dict(zip(SERVED, bad, strict=True))
    with serving(event.config) as server:
        status, page = server.call("GET", "/api/dlq")
        assert status == 200, page
        letters = page["letters"]
        assert [letter["msg_id"] for letter in letters] == sorted([*genuine, *bad])
        marked = {letter["msg_id"]: letter["readable"] for letter in letters}
        assert marked == {**dict.fromkeys(genuine, True), **dict.fromkeys(bad, False)}
        for name, msg_id in bad_ids.items():
            [letter] = [item for item in letters if item["msg_id"] == msg_id]
            assert any(MALFORMED[name][1] in p for p in letter["problems"]), letter
        # Paged across a bad one.
        status, first = server.call("GET", "/api/dlq?limit=4")
        status2, rest = server.call("GET", f"/api/dlq?after={first['next_after']}")
        assert (status, status2) == (200, 200)
        assert [x["msg_id"] for x in first["letters"] + rest["letters"]] == sorted([*genuine, *bad])

        status, shown = server.call("GET", f"/api/dlq/{bad_ids['body-deep']}")
        assert status == 200 and shown["readable"] is False
        assert shown["message_text"] == stored(event, "intents_dlq")[bad_ids["body-deep"]]

        # An unreadable one alone: refused, nothing changed.
        status, refused = server.call(
            "POST", "/api/dlq/replay", json={"msg_ids": [bad_ids["attempts-word"]]}
        )
        assert (status, refused["field"]) == (422, "msg_ids"), refused
        assert 'attempts: "many" is not a count of attempts' in refused["error"]
        assert event.queue_depth() == 0
        # With a readable one: that one goes, the other is listed as refused.
        status, mixed = server.call(
            "POST", "/api/dlq/replay", json={"msg_ids": [genuine[0], bad_ids["intent-string"]]}
        )
        assert status == 200, mixed
        assert [item["msg_id"] for item in mixed["replayed"]] == [genuine[0]]
        assert [item["msg_id"] for item in mixed["refused"]] == [bad_ids["intent-string"]]
        status, everything = server.call("POST", "/api/dlq/replay", json={"all": True})
        assert status == 200, everything
        assert [item["msg_id"] for item in everything["replayed"]] == genuine[1:]
        assert sorted(item["msg_id"] for item in everything["refused"]) == sorted(bad)
        assert event.queue_depth() == len(genuine)
        assert sorted(stored(event, "intents_dlq")) == sorted(bad)

        status, purged = server.call("POST", "/api/dlq/purge", json={"confirm": "purge"})
        assert (status, purged["purged"]) == (200, len(bad))
        log = server.log()
    assert "Traceback" not in log


# Written into the queue itself, between genuine intents.
POISON = {
    "deep": (DEEP, "nested deeper than 64 levels"),
    "huge-unit": (
        json.dumps(intent_json(unit_no="@RAW@")).replace('"@RAW@"', HUGE_INT),
        "4300 digits",
    ),
    "huge-decimal": (HUGE_DECIMAL, "a number too large for a double"),
    "string": ('"an intent"', "not a JSON object"),
    "array": ('[{"idempotency_key": "x"}]', "not a JSON object"),
    "null": ("null", "not a JSON object"),
}


def test_the_drain_refuses_unreadable_queue_messages_and_commits_the_rest(
    workdir, db1_dsn, db2_dsn
):
    with WebhookServer() as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 10)
        keys = event.claim(2, prefix="early")
        ids = dict(
            zip(POISON, send(event, "intents", [t for t, _ in POISON.values()]), strict=True)
        )
        sent = stored(event, "intents")
        keys += event.claim(2, prefix="late")
        stats = json.loads(intake("drain", "--once", "--json", event=event))
        assert (stats["read"], stats["committed"], stats["refused"]) == (10, 4, len(POISON))
        assert webhook.per_key() == {key: 1 for key in keys}
    assert event.tickets() == {key: 1 for key in keys}
    assert event.queue_depth() == 0

    # Each is a dead letter, marked refused with its reason, its text whole.
    listed = {item["source_msg_id"]: item for item in dead_letter_bodies(event)}
    assert set(listed) == set(ids.values())
    for name, msg_id in ids.items():
        item = listed[msg_id]
        assert item["state"] == "refused"
        assert POISON[name][1] in item["last_error"], (name, item["last_error"])
        assert item["intent_text"] == sent[msg_id], name


def dead_letter_bodies(event: Event) -> list[dict[str, Any]]:
    """What the DLQ holds, read in SQL (the intent as text: Python cannot read some)."""
    rows = _rows(
        event.db1,
        "select (message ->> 'source_msg_id')::bigint, message ->> 'state',"
        " message ->> 'last_error', (message -> 'intent')::text from pgmq.q_intents_dlq",
    )
    return [
        {"source_msg_id": s, "state": st, "last_error": e, "intent_text": t} for s, st, e, t in rows
    ]


@pytest.mark.slow
def test_the_dashboard_table_shows_every_letter_and_marks_the_unreadable(event):
    from tests.acceptance.browser_support import chromium
    from tests.acceptance.test_dashboard_browser import open_dashboard, wait_page

    genuine = sorted(stored(event, "intents_dlq"))
    names = ("attempts-word", "body-deep", "pool-object", "dead-at-word")
    bad = send(event, "intents_dlq", [MALFORMED[name][0] for name in names])
    [odd] = send(event, "intents_dlq", [ODD_BUT_READABLE["huge-error"]])
    with serving(event.config) as server, chromium() as browser:
        open_dashboard(browser, server)
        wait_page(browser, lambda p: len(p["letters"]) == 8, 20, "8 dead letters")
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#dlq tbody tr')].map((row) => ({"
            " msg_id: Number(row.dataset.msgId), readable: row.dataset.readable,"
            " disabled: row.querySelector('button.replay').disabled,"
            " cells: [...row.cells].map((cell) => cell.textContent)}));"
        )
        assert [row["msg_id"] for row in rows] == sorted([*genuine, *bad, odd])
        marked = {row["msg_id"]: (row["readable"], row["disabled"]) for row in rows}
        assert marked == {
            **dict.fromkeys([*genuine, odd], ("true", False)),
            **dict.fromkeys(bad, ("false", True)),
        }
        by_id = {row["msg_id"]: row["cells"] for row in rows}
        # msg id, pool, key, user, state, attempts, last error, dead at
        assert by_id[bad[0]][4] == "unreadable: queued" and by_id[bad[0]][5] == "—"
        assert by_id[bad[2]][1] == "—"
        assert by_id[bad[3]][7] == "—"
        assert by_id[odd][6] == "e" * 200 + "…"
        assert by_id[genuine[0]][4] == "queued" and "webhook: HTTP 503" in by_id[genuine[0]][6]
