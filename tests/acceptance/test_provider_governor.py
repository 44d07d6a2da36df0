"""A fleet of drain workers in front of a payment provider that meters its callers
or goes down: the fleet slows down together, nothing is charged for "not now",
nothing is lost or sold twice (issue 26)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import EmbeddedClusters
from intake_cli.tools.testhook import declines
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, draining, wait_for
from tests.conftest import intake, pool_spec, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UNITS, LIMIT = 2000, 200


def _event(workdir: Path, db1: str, db2: str, url: str, units: int, **pool: object) -> Event:
    config = write_config(
        workdir, db1, db2, [pool_spec("drop", units, validation_webhook_url=url, **pool)]
    )
    intake("up", config=config, check=True)
    return Event(config, db1, db2, "drop")


def _dead_letters(event: Event) -> int:
    return event.queue_depth("intents_dlq")


def _drain_metered(event: Event, webhook: WebhookServer) -> tuple[float, int, int]:
    """Two workers drain every unit; the seconds it took, the calls, the 429s."""
    keys = event.claim(UNITS)
    started = time.monotonic()
    with draining(event, "--concurrency", "2", workers=2):
        wait_for(
            lambda: event.queue_depth() == 0 and event.archived() >= UNITS,
            UNITS / LIMIT * 4 + 30,
            "every unit drained",
        )
    seconds = time.monotonic() - started
    calls = webhook.calls()
    assert event.tickets() == {key: 1 for key in keys}
    return seconds, calls["total"], webhook.by_status().get("429", 0)


def test_retry_after_is_obeyed_by_the_fleet_and_never_charged(workdir, db1_dsn, db2_dsn):
    with WebhookServer(rate_limit=LIMIT, retry_after="seconds") as webhook:
        # max_retries 0: a 429 charged an attempt would dead-letter its intent.
        event = _event(workdir, db1_dsn, db2_dsn, webhook.url, UNITS, max_retries=0, batch_size=20)
        seconds, calls, throttled = _drain_metered(event, webhook)
    assert _dead_letters(event) == 0
    assert event.states() == {"committed": UNITS}
    assert calls <= UNITS * 1.05, (calls, throttled, seconds)


def test_without_retry_after_the_fleet_finds_the_limit(workdir, db1_dsn, db2_dsn):
    with WebhookServer(rate_limit=LIMIT, retry_after="none") as webhook:
        event = _event(workdir, db1_dsn, db2_dsn, webhook.url, UNITS, max_retries=0, batch_size=20)
        seconds, calls, throttled = _drain_metered(event, webhook)
    assert _dead_letters(event) == 0
    assert calls <= UNITS * 1.3, (calls, throttled, seconds)
    with psycopg.connect(db1_dsn) as conn:
        (learned,) = conn.execute(
            "select learned_rate from intake.webhook_governor_state() where pool_id = 'drop'"
        ).fetchone()
    # Near the provider's limit: neither far below it nor above.
    assert LIMIT * 0.5 < learned < LIMIT * 1.3


def test_an_outage_and_a_db2_stop_send_nothing_to_the_dlq(workdir, db1_dsn):
    """The webhook down for 8 s, then DB2 stopped for 8 s, max_retries 2: every
    sale is committed once, none dead-lettered, and the down provider gets a
    probe every few seconds, not the fleet's retries; 3 % declines stay declined."""
    ledger_home = workdir / f"ledger-{time.monotonic_ns()}"
    ledger_home.mkdir(mode=0o755)
    clusters = EmbeddedClusters(ledger_home, EmbeddedSettings(synchronous_commit=False))
    db2 = clusters.ensure(("db2",))["db2"].dsn
    try:
        with WebhookServer(decline_share=0.03, delay_ms=5) as webhook:
            event = _event(workdir, db1_dsn, db2, webhook.url, 3000, max_retries=2, batch_size=50)
            keys = event.claim(3000)
            with draining(event, "--concurrency", "2", workers=2):
                wait_for(lambda: len(event.tickets()) >= 300, 60, "the first commits")
                webhook.script(outage="503")
                time.sleep(3)  # the breaker opens; calls become probes
                before = webhook.calls()["total"]
                time.sleep(6)
                during = webhook.calls()["total"] - before
                webhook.script(outage=None)
                wait_for(lambda: len(event.tickets()) >= 1500, 60, "commits after the outage")
                clusters.halt(("db2",))
                time.sleep(8)
                clusters.ensure(("db2",))
                wait_for(
                    lambda: event.queue_depth() == 0 and event.archived() >= 3000,
                    120,
                    "everything drained after DB2 came back",
                )
        declined = [k for k in keys if declines(k, 0.03)]
        assert _dead_letters(event) == 0
        assert event.tickets() == {k: 1 for k in keys if k not in set(declined)}
        assert event.states() == {"committed": 3000 - len(declined), "rejected": len(declined)}
        # Six seconds of an open breaker: a probe every 2 s (a few at most).
        assert during <= 6, during
    finally:
        clusters.stop()
