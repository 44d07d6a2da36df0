"""The webhook governor where the operator looks, through the real processes:
`intake status --json`, `intake watch --once`, serve's `/metrics`, the
dashboard (its event stream, and the page in a headless chromium) and the
gateway's buyer ETA. The governor's state is driven in DB1 the way the drain
drives it, with intake.report_webhook_calls."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.browser_support import chromium
from tests.acceptance.drain_support import Event, make_event, wait_for
from tests.acceptance.gateway_support import provision, running_gateway, token
from tests.acceptance.serve_support import Server, serving
from tests.conftest import run_intake

pytestmark = pytest.mark.timeout(180)

URL = "http://127.0.0.1:9/validate"


def report(event: Event, ok=0, throttled=0, failed=0, retry_after=None) -> None:
    with psycopg.connect(event.db1, autocommit=True) as conn:
        conn.execute(
            "select * from intake.report_webhook_calls(%s, %s, %s, %s, %s)",
            (event.pool_id, ok, throttled, failed, retry_after),
        )


def throttled(event: Event, retry_after: float = 30) -> None:
    """429s with a Retry-After after 300 answered calls, and a rate of 285/s learned
    from a later one (held 30 s, so every face reads the same number); 10 of the
    last second's 40 calls were 429s."""
    report(event, ok=300)
    report(event, throttled=20, retry_after=retry_after)
    with psycopg.connect(event.db1, autocommit=True) as conn:
        conn.execute(
            "update intake.webhook_governors set ok_prev = 30, throttled_prev = 10,"
            " failed_prev = 0, window_start = clock_timestamp(), learned_rate = 285,"
            " learned_at = clock_timestamp(), learned_hold_s = 30, ramp_started_at = null"
        )


def scrape(server: Server) -> dict[str, dict[str, float]]:
    """/metrics' intake_webhook_* samples, parsed by prometheus-client: name → pool → value."""
    text = server.request("GET", "/metrics", token=None).text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("intake_webhook_"):
                found.setdefault(sample.name, {})[sample.labels["pool"]] = sample.value
    return found


def test_status_watch_and_metrics_show_a_throttled_then_broken_provider(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, URL, 20)
    status = json.loads(run_intake("status", "--json", config=event.config, check=True).stdout)
    assert status["pools"][0]["webhook"]["governed"] is False

    throttled(event)
    status = json.loads(run_intake("status", "--json", config=event.config, check=True).stdout)
    webhook = status["pools"][0]["webhook"]
    assert webhook["governed_rate"] == pytest.approx(285, rel=0.05)
    assert webhook["learned_rate"] == pytest.approx(285, rel=0.05)
    assert webhook["retry_after_until"].endswith("+00:00") and webhook["retry_after_s"] > 20
    assert (webhook["breaker"], webhook["probe_at"]) == ("closed", None)
    assert (webhook["throttled_share"], webhook["calls_total"], webhook["throttled_total"]) == (
        0.25,
        320,
        20,
    )

    watched = json.loads(
        run_intake("watch", "--once", "--json", config=event.config, check=True).stdout
    )
    assert watched["pools"][0]["webhook"]["throttled_share"] == 0.25
    screen = run_intake("watch", "--once", config=event.config, check=True).stdout
    [line] = [row for row in screen.splitlines() if row.startswith("webhook drop")]
    assert line.startswith("webhook drop: 28") and "429s 25.0%  Retry-After " in line
    assert line.endswith("breaker closed")

    with serving(event.config) as server:
        scraped = scrape(server)
        assert scraped["intake_webhook_governed_rate"]["drop"] == pytest.approx(285, rel=0.05)
        assert scraped["intake_webhook_learned_rate"]["drop"] == pytest.approx(285, rel=0.05)
        assert 15 < scraped["intake_webhook_retry_after_seconds"]["drop"] <= 30
        assert scraped["intake_webhook_breaker_open"] == {"drop": 0}
        assert scraped["intake_webhook_throttled_share"] == {"drop": 0.25}
        assert scraped["intake_webhook_calls_total"] == {"drop": 320}
        assert scraped["intake_webhook_throttled_total"] == {"drop": 20}

        report(event, failed=200)  # the provider stops answering: the breaker opens
        scraped = scrape(server)
        assert scraped["intake_webhook_breaker_open"] == {"drop": 1}
        assert scraped["intake_webhook_governed_rate"] == {"drop": 0}
        assert scraped["intake_webhook_calls_total"] == {"drop": 520}

    screen = run_intake("watch", "--once", config=event.config, check=True).stdout
    [line] = [row for row in screen.splitlines() if row.startswith("webhook drop")]
    assert line.startswith("webhook drop: 0/s") and "breaker OPEN, probe in " in line
    lines = screen.splitlines()
    assert max(len(row) for row in lines) <= 80 and len(lines) <= 24


# -- the dashboard ---------------------------------------------------------------


@contextmanager
def events_of(server: Server) -> Iterator[queue.Queue]:
    """The dashboard's event stream, read in a thread: (event, data) as they come."""
    found: queue.Queue = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        with httpx.stream(
            "GET", server.url + "/api/events", headers=server.headers(), timeout=30
        ) as response:
            fields: dict[str, str] = {}
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line == "":
                    if "data" in fields:
                        found.put((fields.get("event"), json.loads(fields["data"])))
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield found
    finally:
        stop.set()


def next_event(found: queue.Queue, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            kind, data = found.get(timeout=left)
        except queue.Empty:
            break
        if kind == name:
            return data
    raise AssertionError(f"no {name} event within {timeout} s")


def test_the_event_stream_sends_the_governor_when_it_changes(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, URL, 20)
    with serving(event.config) as server, events_of(server) as found:
        first = next_event(found, "snapshot", 10)
        assert first["snapshot"]["pools"][0]["webhook"]["breaker"] == "closed"
        report(event, failed=200)
        # No metrics row is written: the hub's own once-a-second read carries it.
        opened = next_event(found, "webhook", 3)["pools"]["drop"]
        assert (opened["breaker"], opened["governed_rate"], opened["governed"]) == (
            "open",
            0,
            True,
        )
        assert opened["probe_at"] is not None and opened["calls_total"] == 200


WEBHOOK_CELLS = """
const row = document.querySelector('#pools tr[data-pool="drop"]');
if (!row) return null;
const cell = (field) => row.querySelector(`td[data-field="${field}"]`);
const breaker = cell('breaker');
return {
  row: row.dataset.breaker,
  background: getComputedStyle(row).backgroundColor,
  rate: cell('governed_rate').textContent,
  share: cell('throttled_share').textContent,
  pause: cell('retry_after_s').textContent,
  pause_left: cell('retry_after_s').dataset.value,
  breaker: breaker.textContent,
  breaker_color: getComputedStyle(breaker).color,
  breaker_weight: getComputedStyle(breaker).fontWeight,
};
"""


def wait_cells(browser: Any, predicate, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = browser.execute_script(WEBHOOK_CELLS)
        if seen is not None and predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {seen}")
        time.sleep(0.05)


def test_the_dashboard_shows_an_open_breaker_and_counts_a_pause_down(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, URL, 20)
    with chromium() as browser, serving(event.config, token=None) as server:
        browser.get(f"{server.url}/#token={server.token}")
        quiet = wait_cells(browser, lambda c: c["breaker"] == "closed", 30, "the pool's row")
        assert (quiet["rate"], quiet["share"], quiet["pause"]) == ("no limit", "—", "—")

        report(event, failed=200)
        # Within the hub's second and no new metrics row: it stands out at once.
        opened = wait_cells(browser, lambda c: c["row"] == "open", 3, "the open breaker")
        assert opened["breaker"].startswith("OPEN · probe in ")
        assert opened["rate"] == "0 /s"
        assert opened["breaker_color"] == "rgb(179, 38, 30)"  # --bad
        assert int(opened["breaker_weight"]) >= 700
        assert opened["background"] != quiet["background"]

        report(event, ok=1)  # an answered probe closes it
        throttled(event, retry_after=20)
        paused = wait_cells(
            browser,
            lambda c: c["row"] == "closed" and c["pause"].startswith("Retry-After "),
            3,
            "the Retry-After",
        )
        assert paused["share"] == "25.0 %"
        time.sleep(1.5)
        later = browser.execute_script(WEBHOOK_CELLS)
        assert float(later["pause_left"]) < float(paused["pause_left"]) <= 20
        assert later["pause"] in {f"Retry-After {n} s" for n in range(15, 21)}


# -- the gateway -----------------------------------------------------------------

OPEN_DOOR = {
    "per_ip_rate": 1_000_000,
    "per_ip_burst": 1_000_000,
    "per_buyer_rate": 1000,
    "per_buyer_burst": 1000,
}


def test_a_buyers_eta_follows_the_governed_outflow(workdir, db1_dsn, db2_dsn):
    config = provision(workdir, db1_dsn, db2_dsn, 30, OPEN_DOOR, validation_webhook_url=URL)
    event = Event(config, db1_dsn, db2_dsn, "drop")
    buyers = [str(uuid.uuid4()) for _ in range(12)]
    with running_gateway(config, db1_dsn, db2_dsn) as gw:
        for buyer in buyers:  # one at a time: buyer n has n claims ahead of theirs
            claimed = httpx.post(
                gw.claim_url(), headers={"Authorization": f"Bearer {token(buyer)}"}
            )
            assert claimed.json()["outcome"] == "claimed"
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            conn.execute("select intake.collect_metrics()")
            conn.execute("update intake.engine_metrics set processing_velocity = 100")

        def mine() -> dict[str, Any]:
            answer = httpx.get(
                gw.claim_url(), headers={"Authorization": f"Bearer {token(buyers[10])}"}
            )
            assert answer.status_code == 200
            return answer.json()

        seen: dict[str, Any] = {}

        def eta_is(expected: float | None) -> bool:
            seen.update(mine())
            return seen["position"] == 10 and seen["eta_seconds"] == expected

        wait_for(lambda: eta_is(0.1), 10, "the ETA at the measured 100/s")
        event.set(webhook_rate_per_sec=4)
        wait_for(lambda: eta_is(2.5), 5, "the ETA at the governed 4/s")
        report(event, failed=200)
        wait_for(lambda: eta_is(None), 5, "no ETA while the breaker is open")
        assert seen["refresh_after_seconds"] == 5
