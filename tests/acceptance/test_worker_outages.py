"""Workers ride every outage: `intake drain` started while DB1 or DB2 is down waits
for it, and a worker killed mid-batch has lost only the webhook answers still in
flight. Real processes, a real webhook server, real PostgreSQL clusters stopped
and started under the worker."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import EmbeddedClusters, free_port
from intake_cli.tools.testhook import answers_slowly, declines
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import (
    Event,
    drain_all,
    draining,
    logged,
    make_event,
    recorded_states,
    start_drain,
    stop,
    wait_for,
    with_dsn,
)
from tests.conftest import INTAKE, ROOT, run_intake


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def own_clusters(workdir: Path) -> Iterator[EmbeddedClusters]:
    """Clusters of this test's own, to stop and start under a running worker."""
    home = workdir / f"outage-{time.monotonic_ns()}"
    home.mkdir(mode=0o755)
    clusters = EmbeddedClusters(home, EmbeddedSettings(synchronous_commit=False))
    yield clusters
    clusters.stop()


def _nowhere() -> str:
    """A DSN at a loopback port where nothing listens: connections are refused."""
    return f"host=127.0.0.1 port={free_port()} user=intake dbname=intake"


def _assert_waits_politely(lines: list[dict], label: str) -> None:
    """One line per try, each after the backoff the previous one announced."""
    assert all(f"cannot connect to {label}" in line["error"] for line in lines), lines
    for before, after in itertools.pairwise(lines):
        assert before["retry_in_s"] >= 0.5
        # Both rounded to 0.1 s.
        assert after["waited_s"] - before["waited_s"] >= before["retry_in_s"] - 0.15, lines


def _assert_drained_once(event: Event, keys: list[str], webhook: WebhookServer) -> None:
    assert event.tickets() == {key: 1 for key in keys}
    assert webhook.per_key() == {key: 1 for key in keys}
    assert event.queue_depth() == 0
    assert event.archived() == len(keys)
    assert event.states() == {"committed": len(keys)}
    assert event.units() == {"consumed": len(keys)}


@pytest.mark.slow
def test_started_while_db2_is_down_waits_then_drains_each_intent_once(
    workdir, db1_dsn, webhook, own_clusters
):
    db2 = own_clusters.ensure(("db2",))["db2"].dsn
    event = make_event(workdir, db1_dsn, db2, webhook.url, 300, batch_size=50)
    keys = event.claim(300)
    own_clusters.halt(("db2",))
    with draining(event, "--concurrency", "2") as (proc,):
        wait_for(lambda: len(logged(proc, "waiting_for_db2")) >= 3, 30, "3 waiting lines")
        assert proc.poll() is None
        # Nothing is read or validated before both databases answer.
        assert event.queue_depth() == 300 and event.states() == {}
        assert webhook.per_key() == {}
        own_clusters.ensure(("db2",))
        wait_for(
            lambda: event.queue_depth() == 0 and event.archived() == 300,
            60,
            "the drain once DB2 is back",
        )
        _assert_waits_politely(logged(proc, "waiting_for_db2"), "DB2")
    _assert_drained_once(event, keys, webhook)


@pytest.mark.slow
def test_started_while_db1_is_down_waits_then_drains_each_intent_once(
    workdir, db2_dsn, webhook, own_clusters
):
    db1 = own_clusters.ensure(("db1",))["db1"].dsn
    event = make_event(workdir, db1, db2_dsn, webhook.url, 300, batch_size=50)
    keys = event.claim(300)
    own_clusters.halt(("db1",))
    with draining(event, "--concurrency", "2") as (proc,):
        wait_for(lambda: len(logged(proc, "waiting_for_db1")) >= 3, 30, "3 waiting lines")
        assert proc.poll() is None
        assert webhook.per_key() == {}
        own_clusters.ensure(("db1",))
        wait_for(
            lambda: event.queue_depth() == 0 and event.archived() == 300,
            60,
            "the drain once DB1 is back",
        )
        _assert_waits_politely(logged(proc, "waiting_for_db1"), "DB1")
    _assert_drained_once(event, keys, webhook)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["db1", "db2"])
def test_sigterm_while_waiting_for_a_database_exits_0_at_once(
    workdir, db1_dsn, db2_dsn, webhook, database
):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    event.claim(5)
    cut_off = with_dsn(event, database, _nowhere())
    proc = start_drain(cut_off)
    wait_for(lambda: logged(proc, f"waiting_for_{database}"), 30, "a waiting line")
    sent = time.monotonic()
    stop(proc, timeout=10)  # SIGTERM, and asserts exit 0
    # About a quarter of a second here; the margin is for a loaded test machine.
    assert time.monotonic() - sent < 2
    assert event.queue_depth() == 5 and event.states() == {} and webhook.per_key() == {}


@pytest.mark.slow
@pytest.mark.serial
def test_once_gives_up_after_the_connect_timeout_with_exit_3(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    event.claim(5)
    cut_off = with_dsn(event, "db2", _nowhere())
    started = time.monotonic()
    proc = run_intake("drain", "--once", "--connect-timeout", "2", config=cut_off.config)
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert "cannot connect to DB2" in proc.stderr and "--connect-timeout" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert 2 <= took < 8
    assert event.queue_depth() == 5 and webhook.per_key() == {}


@pytest.mark.slow
def test_configuration_errors_exit_at_once_without_waiting(
    workdir, db1_dsn, db2_dsn, empty_db_dsn, webhook
):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    event.claim(5)

    def drain(config: Path) -> subprocess.CompletedProcess[str]:
        # The continuous drain, which waits forever for an unreachable database.
        argv = [*INTAKE, "-c", str(config), "drain"]
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30)

    not_provisioned = drain(with_dsn(event, "db1", empty_db_dsn).config)
    assert not_provisioned.returncode == 5 and "intake up" in not_provisioned.stderr
    event.set(commit_rpc_name="public.no_such_rpc")
    missing_rpc = drain(event.config)
    assert missing_rpc.returncode == 2 and "public.no_such_rpc" in missing_rpc.stderr
    event.set(commit_rpc_name="public.finalize_transaction")
    unknown = run_intake("drain", "--pool", "ghost", config=event.config)
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    assert event.queue_depth() == 5 and event.tickets() == {} and webhook.per_key() == {}


SLOW_SHARE = 0.3
DECLINE_SHARE = 0.2


def test_sigkill_mid_batch_asks_the_webhook_again_only_for_calls_in_flight(
    workdir, db1_dsn, db2_dsn
):
    """Answers are in DB1 as soon as they arrive: the next worker re-asks only the
    calls that had no answer when the first one was killed."""
    with WebhookServer(
        slow_share=SLOW_SHARE, slow_ms=30_000, decline_share=DECLINE_SHARE
    ) as webhook:
        event = make_event(
            workdir, db1_dsn, db2_dsn, webhook.url, 60, batch_size=60, visibility_timeout=2
        )
        keys = event.claim(60)
        slow = {key for key in keys if answers_slowly(key, SLOW_SHARE)}
        answered = {
            key: "rejected" if declines(key, DECLINE_SHARE) else "validated"
            for key in keys
            if key not in slow
        }
        assert slow and answered

        proc = start_drain(event, "--concurrency", "1", "--webhook-timeout", "60")
        wait_for(
            lambda: webhook.calls()["total"] == 60 and recorded_states(event) == answered,
            15,
            "the fast answers recorded while the slow calls are in flight",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert recorded_states(event) == answered

        webhook.script(slow_share=0.0)
        drain_all(event, 60, "--concurrency", "1")
        per_key = webhook.per_key()

    assert per_key == {key: 2 if key in slow else 1 for key in keys}
    assert sum(per_key.values()) == 60 + len(slow)
    declined = {key for key in keys if declines(key, DECLINE_SHARE)}
    assert event.tickets() == {key: 1 for key in keys if key not in declined}
    assert event.states() == {
        state: count
        for state, count in (("committed", 60 - len(declined)), ("rejected", len(declined)))
        if count
    }
    assert event.queue_depth() == 0 and event.archived() == 60
