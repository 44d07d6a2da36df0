"""The dashboard in a real headless browser (Debian's chromium through Selenium),
against a real `intake serve`, real DB1 and DB2 and the test webhook.

What an operator relies on: the page shows the figures `intake watch --once
--json` shows, a new engine_metrics row reaches it without a reload, its
replay button puts a dead letter back so that it commits, and text from
the database is shown as text, never run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.browser_support import chromium
from tests.acceptance.drain_support import draining, make_event
from tests.acceptance.serve_support import Server, serving
from tests.conftest import ROOT, intake

SCREENSHOT = ROOT / "docs" / "images" / "dashboard.png"

# Each would set window.__pwned if the page ever took it for markup.
SCRIPT_TAG = "<script>window.__pwned = 1</script>"
IMG_TAG = '<img src="x" onerror="window.__pwned = 2">'

# Everything the page shows, read from the DOM: the text a person sees and
# the exact value the page drew it from.
READ_PAGE = """
const shown = (node) => node ? {value: node.dataset.value, text: node.textContent} : null;
const figures = {};
for (const node of document.querySelectorAll('.figures .figure')) figures[node.id] = shown(node);
const pools = {};
for (const row of document.querySelectorAll('#pools tbody tr')) {
  const cells = {state: row.querySelector('td.state').textContent};
  for (const cell of row.querySelectorAll('td[data-field]')) {
    cells[cell.dataset.field] = shown(cell);
  }
  pools[row.dataset.pool] = cells;
}
const workers = [...document.querySelectorAll('#workers tbody tr')].map((row) => ({
  worker_id: row.dataset.worker,
  state: row.querySelector('td.state').textContent,
  committed: row.querySelector('td[data-field=committed]').textContent,
}));
const letters = [...document.querySelectorAll('#dlq tbody tr')].map((row) => ({
  msg_id: Number(row.dataset.msgId),
  cells: [...row.cells].map((cell) => cell.textContent),
}));
return {
  connection: document.getElementById('connection').dataset.state,
  collected_at: document.getElementById('collected').dataset.collectedAt,
  stale: document.getElementById('age').dataset.stale,
  message: document.getElementById('message').textContent,
  figures, pools, workers, letters,
};
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def page(browser: Any) -> dict[str, Any]:
    return browser.execute_script(READ_PAGE)


def wait_page(browser: Any, predicate, timeout: float, what: str) -> dict[str, Any]:
    """The page once `predicate(page)` holds; fails naming `what` and the last page seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = page(browser)
        if predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {seen}")
        time.sleep(0.05)


DLQ_LOADS = (
    "return performance.getEntriesByType('resource')"
    ".filter((e) => e.name.includes('api/dlq?')).length;"
)


def reload_dead_letters(browser: Any) -> None:
    """Press the list's Refresh and wait until its answer has been drawn."""
    before = browser.execute_script(DLQ_LOADS)
    browser.find_element("css selector", "#dlq-refresh").click()
    deadline = time.monotonic() + 10
    while browser.execute_script(DLQ_LOADS) == before:
        assert time.monotonic() < deadline, "the dead-letter list was not reloaded"
        time.sleep(0.05)
    time.sleep(0.3)  # the answer is fetched; let the page draw it


def open_dashboard(browser: Any, server: Server, *, via_address: bool = False) -> dict[str, Any]:
    """Load `/`, give it the token through its form (or the address serve prints, with
    the token after `#`), and wait for its first snapshot."""
    if via_address:
        browser.get(f"{server.url}/#token={server.token}")
    else:
        browser.get(server.url + "/")
    if server.token is not None and not via_address:
        # Without the token the page is a shell: the stream asks for it.
        wait_page(browser, lambda p: p["connection"] == "token", 30, "the page to ask for a token")
        browser.find_element("id", "token").send_keys(server.token)
        browser.find_element("id", "token-use").click()
    return wait_page(
        browser,
        lambda p: p["connection"] == "live" and p["collected_at"],
        30,
        "the first snapshot",
    )


def collect(db1: str) -> datetime:
    """A new engine_metrics row, as pg_cron writes one; returns its collected_at."""
    with psycopg.connect(db1, autocommit=True) as conn:
        conn.execute("select intake.collect_metrics()")
        return conn.execute("select max(collected_at) from intake.engine_metrics").fetchone()[0]


def paused_in_db1(db1: str) -> bool:
    with psycopg.connect(db1) as conn:
        return conn.execute("select paused from intake.engine_config").fetchone()[0]


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def differences(shown: dict[str, Any], watched: dict[str, Any]) -> list[str]:
    """Where the page and `watch --once --json` disagree (empty: they agree)."""
    wrong = []
    figures = shown["figures"]
    rates = [
        p["webhook_error_rate"] for p in watched["pools"] if p["webhook_error_rate"] is not None
    ]
    expected = {
        "queue_depth": watched["queue_depth"],
        "in_flight": watched["in_flight"],
        "oldest_msg_age_s": watched["oldest_msg_age_s"],
        "dlq_depth": watched["dlq_depth"],
        "velocity": watched["velocity"],
        "eta_s": watched["eta_s"],
        "webhook_error_rate": max(rates) if rates else None,
    }
    for name, value in expected.items():
        if _number(figures[name]["value"]) != value:
            wrong.append(f"{name}: page {figures[name]}, watch {value}")
    for name in ("queue_depth", "in_flight", "dlq_depth"):
        if figures[name]["text"] != f"{watched[name]:,}":
            wrong.append(f"{name} drawn as {figures[name]['text']!r}")
    if set(shown["pools"]) != {p["pool_id"] for p in watched["pools"]}:
        wrong.append(f"pools: page {sorted(shown['pools'])}, watch {watched['pools']}")
        return wrong
    for pool in watched["pools"]:
        cells = shown["pools"][pool["pool_id"]]
        for name in ("inventory", "available_slots", "locked", "consumed", "rejected"):
            drawn = (_number(cells[name]["value"]), cells[name]["text"])
            if drawn != (pool[name], f"{pool[name]:,}"):
                wrong.append(f"{pool['pool_id']}.{name}: page {cells[name]}, watch {pool[name]}")
        if _number(cells["dead_lettered"]["value"]) != pool["dead_lettered"]:
            wrong.append(f"{pool['pool_id']}.dead_lettered: page {cells['dead_lettered']}")
        for name in ("processing_velocity", "webhook_error_rate"):
            if _number(cells[name]["value"]) != pool[name]:
                wrong.append(f"{pool['pool_id']}.{name}: page {cells[name]}, watch {pool[name]}")
        state = "recovering" if pool["recovering"] else "paused" if pool["paused"] else "open"
        if cells["state"] != state:
            wrong.append(f"{pool['pool_id']}.state: page {cells['state']}, watch {state}")
    page_workers = sorted((w["worker_id"], w["state"], w["committed"]) for w in shown["workers"])
    watch_workers = sorted(
        (w["worker_id"], w["state"], f"{w['committed']:,}") for w in watched["workers"]
    )
    if page_workers != watch_workers:
        wrong.append(f"workers: page {page_workers}, watch {watch_workers}")
    return wrong


@pytest.mark.slow
def test_figures_equal_watch_and_a_new_row_arrives_without_reload(
    workdir, db1_dsn, db2_dsn, browser
):
    with WebhookServer(decline_share=0.2) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 300, batch_size=100)
        event.claim(200)
        intake("drain", "--once", config=event.config, check=True)

    with serving(event.config) as server:
        first = open_dashboard(browser, server)
        assert first["connection"] == "live"

        # The moment: the row `watch --once --json` collects and reads. No
        # drain runs, so the page holds that row until the next collection.
        watched = json.loads(
            intake("watch", "--once", "--json", config=event.config, check=True).stdout
        )
        assert watched["queue_depth"] == 100 and watched["pools"][0]["consumed"] > 0
        assert [w["state"] for w in watched["workers"]] == ["stopped"]
        shown = wait_page(
            browser, lambda p: not differences(p, watched), 10, "the figures watch printed"
        )
        assert shown["stale"] == "false"

        # A new metrics row, nothing else: the page has it without a reload.
        event.claim(10, prefix="late")
        written = collect(db1_dsn)
        locked = watched["pools"][0]["locked"] + 10
        shown = wait_page(
            browser,
            lambda p: (
                p["collected_at"]
                and datetime.fromisoformat(p["collected_at"]) >= written
                and p["pools"]["drop"]["locked"]["text"] == f"{locked:,}"
            ),
            2,
            "the new metrics row on the page",
        )
        assert shown["pools"]["drop"]["available_slots"]["value"] == str(
            watched["pools"][0]["available_slots"] - 10
        )


@pytest.mark.slow
def test_replay_button_puts_a_dead_letter_back_and_it_commits(workdir, db1_dsn, db2_dsn, browser):
    with WebhookServer(fail_first=1000) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 3, max_retries=0)
        keys = event.claim(3)
        intake("drain", "--once", config=event.config, check=True)
        assert event.queue_depth("intents_dlq") == 3 and event.tickets() == {}
        webhook.script(fail_first=0)  # the payment service is back

        with serving(event.config) as server:
            shown = open_dashboard(browser, server)
            shown = wait_page(browser, lambda p: len(p["letters"]) == 3, 10, "3 dead letters")
            first = shown["letters"][0]
            key = first["cells"][2]
            assert key in keys and "webhook: HTTP 503" in first["cells"][6]

            replay = browser.find_element(
                "css selector", f'#dlq tr[data-msg-id="{first["msg_id"]}"] button.replay'
            )
            # A list reload landing between finding the button and clicking it
            # must leave the same button in place (CI once clicked a detached one).
            reload_dead_letters(browser)
            replay.click()
            shown = wait_page(
                browser,
                lambda p: (
                    f"dead letter {first['msg_id']} replayed" in p["message"]
                    and len(p["letters"]) == 2
                ),
                10,
                "the replay to be confirmed and the list reloaded",
            )
            assert event.queue_depth("intents_dlq") == 2
            assert event.queue_depth() == 1
            assert first["msg_id"] not in [letter["msg_id"] for letter in shown["letters"]]

            intake("drain", "--once", config=event.config, check=True)
            assert "dlq_replay" in server.log()

            # Pause and resume from the page: engine_config changes at once.
            for action, paused in (("pause", True), ("resume", False)):
                browser.find_element(
                    "css selector", f'#pools tr[data-pool="drop"] button[data-action="{action}"]'
                ).click()
                wait_page(
                    browser,
                    lambda p, a=action: f"pool drop: {a}d" in p["message"],
                    10,
                    f"the {action} to be confirmed",
                )
                assert paused_in_db1(event.db1) is paused

        assert event.tickets() == {key: 1}
        assert webhook.per_key()[key] == 2  # the failed call, then the one that validated
    assert event.queue_depth("intents_dlq") == 2


@pytest.mark.slow
def test_text_from_the_database_is_shown_as_text(workdir, db1_dsn, db2_dsn, browser):
    reason = f"card service says {SCRIPT_TAG}{IMG_TAG}"
    with WebhookServer(fail_first=1000, fail_reason=reason) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 2, max_retries=0)
        event.claim(1)
        intake("drain", "--once", config=event.config, check=True)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # Written by somebody hostile: a dead letter and a worker of their own.
        conn.execute(
            "select * from pgmq.send('intents_dlq', %s)",
            (
                Jsonb(
                    {
                        "intent": {
                            "idempotency_key": "00000000-0000-0000-0000-000000000001",
                            "pool_id": SCRIPT_TAG,
                            "user_id": IMG_TAG,
                        },
                        "state": "queued",
                        "attempts": 1,
                        "last_error": IMG_TAG,
                    }
                ),
            ),
        )
        conn.execute(
            "insert into intake.workers (worker_id, hostname, pid, pool_filter, concurrency)"
            " values (%s, %s, 4242, %s, 1)",
            (SCRIPT_TAG, IMG_TAG, SCRIPT_TAG),
        )

    # Without INTAKE_ADMIN_TOKEN: the page opens at the address serve printed.
    with serving(event.config, token=None) as server:
        open_dashboard(browser, server, via_address=True)
        # The token left the address bar (and so the history) at once.
        assert browser.current_url == server.url + "/"
        shown = wait_page(
            browser,
            lambda p: (
                len(p["letters"]) == 2 and any(w["worker_id"] == SCRIPT_TAG for w in p["workers"])
            ),
            10,
            "both dead letters and the forged worker",
        )
        failed, forged = shown["letters"]
        assert reason in failed["cells"][6]
        assert forged["cells"][1:4] == [
            SCRIPT_TAG,
            "00000000-0000-0000-0000-000000000001",
            IMG_TAG,
        ]
        assert forged["cells"][6] == IMG_TAG
        worker_cells = browser.execute_script(
            "return [...document.querySelectorAll('#workers tbody tr')]"
            ".map((r) => [...r.cells].map((c) => c.textContent));"
        )
        assert [f"{IMG_TAG}:4242", SCRIPT_TAG] in [cells[:2] for cells in worker_cells]
        # Shown, and nothing of it became an element or ran.
        planted = "#dlq img, #workers img, body script:not([src])"
        assert browser.find_elements("css selector", planted) == []
        assert browser.execute_script("return window.__pwned") is None


@pytest.mark.slow
def test_a_running_drain_shows_on_the_page_and_its_charts(workdir, db1_dsn, db2_dsn, browser):
    """Rows written while a drain runs reach the page one by one; the charts draw them.

    With INTAKE_SCREENSHOT=1 the page is saved, mid-drain, to docs/images/dashboard.png
    (the README's picture).
    """
    # Some first calls fail and, with no retries, are dead-lettered: the error
    # chart and the DLQ list have something to show.
    with WebhookServer(delay_ms=300, decline_share=0.05, fail_share=0.02) as webhook:
        event = make_event(
            workdir, db1_dsn, db2_dsn, webhook.url, 4000, batch_size=50, max_retries=0
        )
        event.claim(3000)
        with serving(event.config) as server:
            open_dashboard(browser, server)
            seen: list[int] = []
            with draining(event, "--concurrency", "1"):
                # A collection a second (pg_cron's 5 s, hurried): each reaches the page.
                for n in range(8):
                    time.sleep(1)
                    written = collect(db1_dsn)
                    shown = wait_page(
                        browser,
                        lambda p, w=written: datetime.fromisoformat(p["collected_at"]) >= w,
                        10,
                        "the row just written",
                    )
                    seen.append(int(shown["pools"]["drop"]["consumed"]["value"]))
                    if n == 5 and os.environ.get("INTAKE_SCREENSHOT") == "1":
                        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                        browser.save_screenshot(str(SCREENSHOT))
                assert any(w["state"] == "alive" for w in page(browser)["workers"])
    assert seen == sorted(seen) and seen[-1] > seen[0], seen
    charts = browser.execute_script("return document.querySelectorAll('.chart canvas').length")
    assert charts == 2


# -- the server side, without a browser ---------------------------------------------


def read_events(lines: Iterator[str], count: int) -> list[tuple[str, str, dict]]:
    """The next `count` events of an SSE response's lines: (id, event, data), the drain
    tick's own events (test_the_page_flags_drain_ticks_that_stop_arriving) left out."""
    found: list[tuple[str, str, dict]] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields and fields.get("event") != "tick":
                found.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                if len(found) == count:
                    return found
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    raise AssertionError(f"the stream ended after {found}")


def db1_sessions(db1: str) -> int:
    with psycopg.connect(db1, autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        ).fetchone()[0]


@pytest.mark.slow
def test_ten_streams_share_one_reader_and_get_every_row(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 50)
    with serving(event.config) as server:
        refused = server.request("GET", "/api/events", token=None)
        assert refused.status_code == 401 and refused.json()["field"] is None
        before = db1_sessions(db1_dsn)
        with ExitStack() as streams:
            opened = [
                streams.enter_context(
                    httpx.stream(
                        "GET", server.url + "/api/events", headers=server.headers(), timeout=30
                    )
                )
                for _ in range(10)
            ]
            assert {r.headers["content-type"] for r in opened} == {
                "text/event-stream; charset=utf-8"
            }
            lines = [r.iter_lines() for r in opened]
            first = [read_events(stream, 1)[0] for stream in lines]
            # One DB1 session reads for all ten pages.
            assert db1_sessions(db1_dsn) - before == 1
            rows, later = [], [[] for _ in lines]
            for _ in range(3):  # pg_cron's rows, each read before the next is written
                rows.append(collect(db1_dsn))
                for got, stream in zip(later, lines, strict=True):
                    got.extend(read_events(stream, 1))
        # Every stream got the same snapshot (one read, fanned out) and then
        # each new row, in order.
        assert len({(i, e, json.dumps(d)) for i, e, d in first}) == 1
        assert first[0][1] == "snapshot"
        for events in later:
            assert [e for _, e, _ in events] == ["snapshot"] * 3
            assert [datetime.fromisoformat(d["collected_at"]) for _, _, d in events] == rows
            assert events == later[0]
        # What a page shows is watch's JSON for the same row.
        watched = json.loads(
            intake("watch", "--once", "--json", config=event.config, check=True).stdout
        )
        [(_, _, data)] = read_events_once(server)
        snap = data["snapshot"]
        for key in ("queue_depth", "in_flight", "dlq_depth", "velocity", "pools", "schedule"):
            assert snap[key] == watched[key], key


def read_events_once(server: Server) -> list[tuple[str, str, dict]]:
    with httpx.stream(
        "GET", server.url + "/api/events", headers=server.headers(), timeout=30
    ) as response:
        return read_events(response.iter_lines(), 1)


def test_page_and_assets_are_served_safely(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    with serving(event.config) as server:
        page_ = server.request("GET", "/", token=None)
        assert page_.status_code == 200
        assert page_.headers["content-type"] == "text/html; charset=utf-8"
        policy = page_.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "https://" not in page_.text and "http://" not in page_.text  # no CDN

        expected = {
            "/static/dashboard.js": "text/javascript; charset=utf-8",
            "/static/dashboard.css": "text/css; charset=utf-8",
            "/static/vendor/uplot/uPlot.iife.min.js": "text/javascript; charset=utf-8",
            "/static/vendor/uplot/uPlot.min.css": "text/css; charset=utf-8",
            "/static/vendor/uplot/LICENSE": "text/plain; charset=utf-8",
        }
        for path, kind in expected.items():
            response = server.request("GET", path, token=None)
            assert (response.status_code, response.headers["content-type"]) == (200, kind), path
            assert response.headers["x-content-type-options"] == "nosniff"
        assert "MIT License" in server.request("GET", "/static/vendor/uplot/LICENSE").text

        for path in (
            "/static/../dashboard.py",
            "/static/..%2fdashboard.py",
            "/static/%2e%2e/%2e%2e/serve/app.py",
            "/static/vendor/../../events.py",
            "/static/.hidden",
            "/static/vendor",
            "/static/vendor/uplot/uPlot.d.ts",
            "/static/..%5cdashboard.py",
            "/static/%00",
        ):
            response = server.request("GET", path, token=None)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])


@pytest.mark.slow
def test_the_page_flags_drain_ticks_that_stop_arriving(workdir, db1_dsn, db2_dsn, webhook, browser):
    """pg_net never says a tick failed to arrive: the page says it, from serve's own count."""
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    badge = (
        "const n = document.getElementById('tick');"
        " return [n.hidden, n.dataset.stale, n.textContent];"
    )
    with serving(event.config, args=("--expect-ticks", "--tick-stale-after", "2")) as server:
        open_dashboard(browser, server)
        deadline = time.monotonic() + 15
        while browser.execute_script(badge) != [
            False,
            "true",
            "STALE: no drain tick since serve started",
        ]:
            assert time.monotonic() < deadline, browser.execute_script(badge)
            time.sleep(0.1)
        assert server.call("POST", "/api/drain/tick")[0] == 200
        deadline = time.monotonic() + 10
        while browser.execute_script(badge)[1] != "false":
            assert time.monotonic() < deadline, browser.execute_script(badge)
            time.sleep(0.1)
        hidden, _, shown = browser.execute_script(badge)
        assert not hidden and shown.startswith("drain tick ") and shown.endswith(" s ago")
        deadline = time.monotonic() + 10
        while browser.execute_script(badge)[1] != "true":
            assert time.monotonic() < deadline, browser.execute_script(badge)
            time.sleep(0.1)
        assert browser.execute_script(badge)[2].startswith("STALE: last drain tick ")
