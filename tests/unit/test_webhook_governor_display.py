"""The webhook governor as each face draws it, from known states (no database):
watch's line, /metrics' families and when the dashboard's hub sends an event."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console, Group

from intake_cli.engine.telemetry import WebhookGovernor
from intake_cli.faces import watch
from intake_cli.faces.serve import events, metrics

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def governor(**changes: object) -> WebhookGovernor:
    fields: dict[str, object] = {
        "pool_id": "drop",
        "configured_rate": 0,
        "governed_rate": None,
        "learned_rate": None,
        "retry_after_until": None,
        "retry_after_s": 0.0,
        "breaker": "closed",
        "probe_at": None,
        "probe_in_s": None,
        "opened_at": None,
        "throttled_share": None,
        "calls_total": 0,
        "throttled_total": 0,
    }
    fields.update(changes)
    return WebhookGovernor(**fields)  # type: ignore[arg-type]


PAUSED = governor(
    governed_rate=285.04,
    learned_rate=285.04,
    retry_after_until=NOW + timedelta(seconds=12),
    retry_after_s=11.2,
    throttled_share=0.25,
    calls_total=320,
    throttled_total=20,
)
OPEN = governor(
    governed_rate=0.0,
    learned_rate=40.0,
    breaker="open",
    probe_at=NOW + timedelta(seconds=2),
    probe_in_s=1.3,
    opened_at=NOW,
    calls_total=55,
)


def shown(line: object, width: int = 80) -> str:
    buffer = io.StringIO()
    # In a Group, as the frame draws it (print() would join bare Texts into one).
    Console(file=buffer, width=width).print(Group(line))
    return buffer.getvalue().rstrip("\n")


def styles_of(line, text: str) -> set[str]:
    start = line.plain.index(text)
    return {str(s.style) for s in line.spans if s.start <= start < s.end}


def test_the_json_every_face_shares():
    assert not governor().governed
    assert governor(configured_rate=50, governed_rate=50.0).governed
    assert PAUSED.governed and OPEN.governed
    assert PAUSED.as_json() == {
        "configured_rate": 0,
        "governed_rate": 285.04,
        "learned_rate": 285.04,
        "retry_after_until": "2026-05-01T12:00:12+00:00",
        "retry_after_s": 11.2,
        "breaker": "closed",
        "probe_at": None,
        "probe_in_s": None,
        "opened_at": None,
        "throttled_share": 0.25,
        "calls_total": 320,
        "throttled_total": 20,
        "governed": True,
    }


def test_watch_line_shows_rate_429s_countdown_and_breaker():
    assert shown(watch.webhook_line("drop", governor().as_json())) == (
        "webhook drop: no limit  429s —  breaker closed"
    )
    paused = watch.webhook_line("drop", PAUSED.as_json())
    # The countdown rounds up: 11.2 s left still holds every call back for 12.
    assert shown(paused) == "webhook drop: 285/s  429s 25.0%  Retry-After 12 s  breaker closed"
    opened = watch.webhook_line("drop", OPEN.as_json())
    assert shown(opened) == "webhook drop: 0/s  429s —  breaker OPEN, probe in 2 s"
    assert "bold red" in styles_of(opened, "breaker OPEN")
    assert "bold red" not in styles_of(paused, "breaker closed")
    slow = governor(governed_rate=5.0, retry_after_until=NOW, retry_after_s=75.0)
    assert "5.0/s" in shown(watch.webhook_line("drop", slow.as_json()))
    assert "Retry-After 1:15" in shown(watch.webhook_line("drop", slow.as_json()))


def test_watch_line_shows_a_pool_id_literally_and_never_wraps():
    line = watch.webhook_line("\x1b[2J[red]p[/]\u202e", OPEN.as_json())
    text = shown(line)
    assert "\x1b" not in text and "\u202e" not in text
    assert text.startswith("webhook \\x1b[2J[red]p[/]\\u202e: 0/s")
    long = shown(watch.webhook_line("p" * 60, OPEN.as_json()))
    assert "\n" not in long and long.endswith("…")


def test_watch_frame_has_a_line_per_pool_that_does_not_start_with_its_id():
    pool = {
        "pool_id": "drop",
        "inventory": 10,
        "available_slots": 9,
        "locked": 1,
        "consumed": 0,
        "rejected": 0,
        "retried": 0,
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
    snap = watch.Snapshot(
        taken_at=NOW,
        schedule=watch.telemetry.ScheduleMode("none", None, "not scheduled"),
        pools=[pool, {**pool, "pool_id": "free"}],
        velocity=[],
        webhooks={"drop": OPEN, "free": governor(pool_id="free")},
    )
    buffer = io.StringIO()
    watch.print_once(snap, Console(file=buffer, width=80))
    lines = buffer.getvalue().splitlines()
    assert "webhook drop: 0/s  429s —  breaker OPEN, probe in 2 s" in lines
    assert "webhook free: no limit  429s —  breaker closed" in lines
    # Scripts (and the tests) find a pool's figures by the line that starts with its id.
    assert len([line for line in lines if line.strip().startswith("drop")]) == 1
    assert [p["webhook"] for p in snap.as_json()["pools"]] == [
        OPEN.as_json(),
        governor(pool_id="free").as_json(),
    ]


def test_metrics_families_per_pool_absent_where_there_is_no_figure():
    pools = [
        {"pool_id": "drop", "webhook": OPEN.as_json()},
        {"pool_id": "paid", "webhook": PAUSED.as_json()},
        {"pool_id": "free", "webhook": governor(pool_id="free").as_json()},
        {"pool_id": "new", "webhook": None},
    ]
    found = {
        family.name: {s.labels["pool"]: s.value for s in family.samples}
        for family in metrics.webhook_families(pools)
    }
    assert found == {
        "intake_webhook_governed_rate": {"drop": 0.0, "paid": 285.04},
        "intake_webhook_learned_rate": {"drop": 40.0, "paid": 285.04},
        "intake_webhook_retry_after_seconds": {"drop": 0.0, "paid": 11.2, "free": 0.0},
        "intake_webhook_breaker_open": {"drop": 1.0, "paid": 0.0, "free": 0.0},
        "intake_webhook_throttled_share": {"paid": 0.25},
        "intake_webhook_calls": {"drop": 55.0, "paid": 320.0, "free": 0.0},
        "intake_webhook_throttled": {"drop": 0.0, "paid": 20.0, "free": 0.0},
    }
    kinds = {family.name: family.type for family in metrics.webhook_families(pools)}
    assert kinds["intake_webhook_calls"] == kinds["intake_webhook_throttled"] == "counter"


def test_the_hub_sends_the_governor_when_it_changes_and_each_second_of_a_countdown():
    def key(*governors: WebhookGovernor) -> str:
        return events._webhook_key(events.webhook_payload({g.pool_id: g for g in governors}))

    quiet = governor(governed_rate=100.0, configured_rate=100)
    assert key(quiet) == key(quiet)
    assert key(quiet) != key(governor(governed_rate=90.0, configured_rate=100))
    # A pause: a new event each whole second it counts down, not each poll.
    assert key(PAUSED) == key(governor(**{**PAUSED.__dict__, "retry_after_s": 11.9}))
    assert key(PAUSED) != key(governor(**{**PAUSED.__dict__, "retry_after_s": 10.9}))
    assert key(OPEN) != key(governor(**{**OPEN.__dict__, "probe_in_s": 0.2}))
    assert key(OPEN) != key(governor(**{**OPEN.__dict__, "breaker": "closed"}))
