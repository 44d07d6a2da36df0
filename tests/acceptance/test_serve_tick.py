"""The drain's HTTP tick: concurrent ticks commit each intent once; a DB2 outage loses nothing."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import make_event, wait_for, with_dsn
from tests.acceptance.serve_support import free_port, serving, start_serve, stop_serve

pytestmark = pytest.mark.slow

CONCURRENT = 20


@pytest.fixture
def webhook():
    with WebhookServer() as server:
        yield server


def test_20_concurrent_ticks_over_1000_intents_commit_each_once(workdir, db1_dsn, db2_dsn, webhook):
    # Batches of 25: each round of 20 ticks reads 500 intents, so two rounds
    # of full contention drain them.
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 1000, batch_size=25)
    keys = event.claim(1000)
    committed = 0
    with serving(event.config) as server, ThreadPoolExecutor(CONCURRENT) as threads:
        for _ in range(20):
            answers = list(
                threads.map(lambda _: server.call("POST", "/api/drain/tick"), range(CONCURRENT))
            )
            assert all(status == 200 for status, _ in answers), answers
            committed += sum(counts["committed"] for _, counts in answers)
            if event.queue_depth() == 0:
                break
    assert committed == 1000
    assert event.tickets() == {key: 1 for key in keys}
    assert webhook.per_key() == {key: 1 for key in keys}
    assert event.units() == {"consumed": 1000}
    assert event.archived() == 1000


def test_a_tick_during_a_db2_outage_leaves_everything_for_the_next(
    workdir, db1_dsn, db2_dsn, webhook
):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 50, max_retries=5)
    keys = event.claim(50)
    dead_db2 = re.sub(r"port=\d+", f"port={free_port()}", db2_dsn)
    outage = with_dsn(event, "db2", dead_db2)
    with serving(outage.config) as server:
        status, counts = server.call("POST", "/api/drain/tick")
    assert status == 200, counts
    # DB2 out of reach: handed back, no attempt charged (issue 26).
    assert (counts["read"], counts["committed"], counts["retried"]) == (50, 0, 0)
    assert counts["deferred"] == 50
    assert event.tickets() == {}
    assert event.queue_depth() == 50 and event.units() == {"locked": 50}
    with serving(event.config) as server:

        def tick_until_drained() -> bool:
            status, counts = server.call("POST", "/api/drain/tick")
            assert status == 200, counts
            return event.queue_depth() == 0

        wait_for(tick_until_drained, 60, "ticks to commit what the outage left", interval=0.3)
    assert event.tickets() == {key: 1 for key in keys}
    # Validated before the outage: the webhook was not asked again.
    assert webhook.per_key() == {key: 1 for key in keys}
    assert event.units() == {"consumed": 50}


def test_a_tick_whose_caller_gives_up_still_finishes_its_batch(workdir, db1_dsn, db2_dsn):
    with WebhookServer(delay_ms=1500) as slow:
        event = make_event(workdir, db1_dsn, db2_dsn, slow.url, 10)
        keys = event.claim(10)
        with serving(event.config) as server:
            with pytest.raises(httpx.ReadTimeout):
                server.request("POST", "/api/drain/tick", timeout=0.5)
            wait_for(lambda: event.tickets() == {key: 1 for key in keys}, 30, "the batch to commit")
            log = server.log()
    assert event.queue_depth() == 0 and event.units() == {"consumed": 10}
    assert "Traceback" not in log


def test_sigterm_during_a_tick_lets_it_finish_and_exits_0(workdir, db1_dsn, db2_dsn):
    with WebhookServer(delay_ms=2000) as slow:
        event = make_event(workdir, db1_dsn, db2_dsn, slow.url, 10)
        keys = event.claim(10)
        server = start_serve(event.config)
        with ThreadPoolExecutor(1) as thread:
            answer = thread.submit(server.call, "POST", "/api/drain/tick")
            wait_for(lambda: slow.calls()["total"] >= 10, 30, "the tick's webhook calls")
            server.proc.send_signal(signal.SIGTERM)
            status, counts = answer.result(timeout=60)
        log = stop_serve(server)
    assert status == 200 and counts["committed"] == 10, counts
    assert event.tickets() == {key: 1 for key in keys}
    assert '"stopped"' in log and "Traceback" not in log
