"""`intake drain` as operators run it: real subprocesses, a real webhook server,
real DB1 and DB2. Every test asserts exact counts in DB2 and in the queue."""

from __future__ import annotations

import json
import random
import signal
import time

import psycopg
import pytest

from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import EmbeddedClusters
from intake_cli.tools.testhook import fails_first_call
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import (
    Event,
    drain_all,
    draining,
    make_event,
    start_drain,
    stop,
    wait_for,
)
from tests.conftest import intake, pool_spec, write_config


@pytest.fixture
def webhook():
    with WebhookServer() as server:
        yield server


@pytest.mark.slow
def test_2000_claims_commit_once_each(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 2000, batch_size=200)
    keys = event.claim(2000)
    drain_all(event, 2000, "--concurrency", "4")

    assert event.tickets() == {key: 1 for key in keys}
    assert event.queue_depth() == 0
    assert event.archived() == 2000
    assert event.units() == {"consumed": 2000}
    assert event.states() == {"committed": 2000}
    assert webhook.per_key() == {key: 1 for key in keys}


def _updates(dsn: str, table: str) -> tuple[int, int]:
    """Rows of `table` updated so far, and how many of those in place (heap-only)."""
    with psycopg.connect(dsn) as conn:
        # Exactly one row: a table missing from the statistics fails here.
        [(updated, in_place)] = conn.execute(
            "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables"
            " where schemaname = 'intake' and relname = %s",
            (table,),
        ).fetchall()
    return updated, in_place


@pytest.mark.slow
def test_a_drained_intent_updates_its_state_in_place(workdir, db1_dsn, db2_dsn, webhook):
    # Each drained intent writes its state twice (validated, then committed):
    # the second time in place, without new index entries. The drain's
    # workers exit before the counts are read, so their backends have
    # reported them.
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 600, batch_size=200)
    event.claim(600)
    drain_all(event, 600, "--concurrency", "2")
    assert event.states() == {"committed": 600}

    wait_for(
        lambda: _updates(db1_dsn, "intent_state")[0] >= 600, 10, "the drain's table statistics"
    )
    updates, in_place = _updates(db1_dsn, "intent_state")
    assert updates == 600
    assert in_place >= 540, (updates, in_place)


@pytest.mark.slow
def test_declined_intents_release_their_units(workdir, db1_dsn, db2_dsn):
    with WebhookServer(decline_share=0.1) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 1000)
        keys = event.claim(1000)
        drain_all(event, 1000)
        declined = {call["key"] for call in webhook.calls()["calls"] if call["status"] == 402}
    assert 50 < len(declined) < 150  # about a tenth, decided per key by the server
    committed = event.tickets()
    assert set(committed) == set(keys) - declined
    assert all(count == 1 for count in committed.values())
    assert event.units() == {"consumed": 1000 - len(declined), "available": len(declined)}
    assert event.states() == {"committed": 1000 - len(declined), "rejected": len(declined)}
    with psycopg.connect(db1_dsn) as conn:
        reasons = conn.execute(
            "select distinct last_error from intake.intent_state where state = 'rejected'"
        ).fetchall()
    assert reasons == [("HTTP 402: card declined",)]

    # The released units are on sale again, and only they.
    again = event.claim(len(declined), prefix="second-chance")
    assert len(again) == len(declined)
    assert event.units() == {"consumed": 1000 - len(declined), "locked": len(declined)}


@pytest.mark.slow
def test_transient_5xx_is_retried_and_each_key_called_at_most_twice(workdir, db1_dsn, db2_dsn):
    """A third of the keys fail their first call while the provider answers the
    others: each is asked again once (the breaker stays closed), then commits."""
    with WebhookServer(fail_share=0.3) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 300)
        keys = event.claim(300)
        drain_all(event, 300, "--concurrency", "2")
        per_key = webhook.per_key()
    assert event.tickets() == {key: 1 for key in keys}
    assert per_key == {key: 2 if fails_first_call(key, 0.3) else 1 for key in keys}
    assert 50 < sum(calls == 2 for calls in per_key.values()) < 150
    assert event.states() == {"committed": 300}


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_commits_exactly_once(workdir, db1_dsn, db2_dsn):
    # 600 intents: four kills take at most a few hundred of them (each comes
    # 20 commits and under 0.3 s after its worker started committing), and
    # the assertion below checks that every kill landed mid-drain.
    with WebhookServer(delay_ms=200) as webhook:
        event = make_event(
            workdir, db1_dsn, db2_dsn, webhook.url, 600, visibility_timeout=2, batch_size=25
        )
        keys = event.claim(600)
        rng = random.Random(3)
        for round_ in range(4):
            done = len(event.tickets())
            proc = start_drain(event, "--concurrency", "2")
            # Kill only once this worker is committing, at a random moment.
            wait_for(lambda done=done: len(event.tickets()) > done + 20, 30, "commits")
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert len(event.tickets()) < 600, f"drained before kill {round_ + 1}"
        drain_all(event, 600, "--concurrency", "2")
    tickets = event.tickets()
    assert tickets == {key: 1 for key in keys}
    with psycopg.connect(db2_dsn) as conn:
        orders = conn.execute("select count(*) from public.legacy_orders").fetchone()[0]
    assert orders == 600
    assert event.units() == {"consumed": 600}
    assert event.queue_depth() == 0


@pytest.mark.slow
def test_two_and_four_workers_never_process_an_intent_twice(workdir, db1_dsn, db2_dsn):
    # 1,000 intents a round: 20 batches of 50, so every worker's slots race
    # for batches many times over.
    with WebhookServer(delay_ms=5) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 2000, batch_size=50)
        first = event.claim(1000, prefix="two")
        drain_all(event, 1000, "--concurrency", "2", workers=2)
        assert webhook.per_key() == {key: 1 for key in first}

        webhook.reset()
        second = event.claim(1000, prefix="four")
        drain_all(event, 2000, "--concurrency", "2", workers=4)
        assert webhook.per_key() == {key: 1 for key in second}
    assert event.tickets() == {key: 1 for key in first + second}


# A failure is charged only when the provider answered another call since the
# last failure reported, so approved buyers' answers must land between the
# failing keys' retry waves (about a second apart). A thread that claimed an
# approved buyer every 0.2 s once fell behind on a loaded machine: two waves
# came back to back, the second was taken for an outage and one key was called
# a fourth time. So the approved buyers are claimed up front and DB1 itself
# makes one visible every 40 ms: however slow this process or the drain, every
# read after a wave finds some waiting.
@pytest.mark.slow
@pytest.mark.serial
def test_past_max_retries_goes_to_the_dlq_and_replay_commits_once(workdir, db1_dsn, db2_dsn):
    """Keys that fail every call while the provider answers the others use up
    their retries (an outage, where it answers nobody, would not)."""
    with WebhookServer() as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 400, max_retries=2)
        keys = event.claim(20)
        webhook.script(fail_keys=keys)
        event.claim(350, prefix="ok")
        event.stagger_visibility("ok", every_ms=40)
        with draining(event):
            wait_for(lambda: event.queue_depth("intents_dlq") == 20, 90, "20 dead letters")
            event.stagger_visibility("ok", every_ms=0)
            wait_for(lambda: event.queue_depth() == 0, 30, "the approved buyers drained")
        assert {k: n for k, n in webhook.per_key().items() if k in keys} == {k: 3 for k in keys}

        listed = json.loads(intake("dlq", "list", "--json", config=event.config, check=True).stdout)
        assert sorted(item["idempotency_key"] for item in listed) == sorted(keys)
        assert {item["last_error"] for item in listed} == {"webhook: HTTP 503"}
        assert {(item["state"], item["attempts"]) for item in listed} == {("queued", 3)}
        assert not set(event.tickets()) & set(keys)
        approved = len(event.tickets())

        shown = json.loads(
            intake("dlq", "show", str(listed[0]["msg_id"]), config=event.config, check=True).stdout
        )
        assert shown["intent_state"]["state"] == "dead"

        dry = intake("dlq", "replay", "--all", "--dry-run", config=event.config, check=True)
        assert "would replay 20 intents" in dry.stdout
        assert event.queue_depth("intents_dlq") == 20

        webhook.script(fail_keys=[])
        webhook.reset()
        intake("dlq", "replay", "--all", config=event.config, check=True)
        assert event.queue_depth("intents_dlq") == 0
        drain_all(event, 40)
        assert webhook.per_key() == {key: 1 for key in keys}
    tickets = event.tickets()
    assert {k: n for k, n in tickets.items() if k in keys} == {key: 1 for key in keys}
    assert len(tickets) == approved + 20 and set(tickets.values()) == {1}
    assert event.states() == {"committed": approved + 20}


@pytest.mark.slow
def test_replayed_validated_intent_is_not_validated_again(workdir, db1_dsn, db2_dsn):
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        # A commit RPC that fails until the operator fixes the ledger.
        conn.execute("create table ledger_switch (open boolean not null)")
        conn.execute("insert into ledger_switch values (false)")
        conn.execute("""
            create function public.guarded_finalize(payload jsonb) returns jsonb
            language plpgsql as $$
            begin
                if not (select open from ledger_switch) then
                    raise exception 'ledger closed for maintenance';
                end if;
                return public.finalize_transaction(payload);
            end $$""")
    with WebhookServer() as webhook:
        event = make_event(
            workdir,
            db1_dsn,
            db2_dsn,
            webhook.url,
            10,
            max_retries=1,
            commit_rpc_name="public.guarded_finalize",
        )
        keys = event.claim(10)
        with draining(event):
            wait_for(lambda: event.queue_depth("intents_dlq") == 10, 60, "10 dead letters")
        listed = json.loads(intake("dlq", "list", "--json", config=event.config, check=True).stdout)
        assert {item["state"] for item in listed} == {"validated"}
        assert all("ledger closed for maintenance" in item["last_error"] for item in listed)

        with psycopg.connect(db2_dsn, autocommit=True) as conn:
            conn.execute("update ledger_switch set open = true")
        intake(
            "dlq",
            "replay",
            *(str(item["msg_id"]) for item in listed),
            config=event.config,
            check=True,
        )
        drain_all(event, 20)
        assert webhook.per_key() == {key: 1 for key in keys}
    assert event.tickets() == {key: 1 for key in keys}


def test_once_processes_one_batch_and_exits(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 250, batch_size=100)
    event.claim(250)
    proc = intake(
        "drain", "--once", "--json", "--log-level", "warning", config=event.config, check=True
    )
    stats = json.loads(proc.stdout)
    assert (stats["read"], stats["committed"], stats["batches"]) == (100, 100, 1)
    assert len(event.tickets()) == 100 and event.queue_depth() == 150


def test_sigterm_finishes_in_flight_work_and_exits_0(workdir, db1_dsn, db2_dsn):
    with WebhookServer(delay_ms=1500) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 30, batch_size=30)
        keys = event.claim(30)
        proc = start_drain(event, "--concurrency", "1")
        wait_for(lambda: webhook.calls()["total"] >= 30, 20, "the batch's webhook calls")
        proc.send_signal(signal.SIGTERM)
        stop(proc)
    # The in-flight batch was finished, not dropped: everything committed.
    assert event.tickets() == {key: 1 for key in keys}
    assert event.queue_depth() == 0


@pytest.mark.slow
@pytest.mark.serial
def test_commit_rate_limit_holds_across_two_workers(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(
        workdir, db1_dsn, db2_dsn, webhook.url, 2000, commit_rate_per_sec=100, batch_size=50
    )
    event.claim(2000)
    with draining(event, "--concurrency", "2", workers=2):
        wait_for(lambda: len(event.tickets()) >= 1250, 40, "12 s of commits")
    with psycopg.connect(db2_dsn) as conn:
        # Skip the first second (workers starting), then count a 10 s window.
        in_window = conn.execute(
            "with start as (select min(committed_at) + interval '1 second' as t"
            "               from public.tickets)"
            " select count(*) from public.tickets, start"
            " where committed_at >= start.t and committed_at < start.t + interval '10 seconds'"
        ).fetchone()[0]
    assert 900 <= in_window <= 1100, f"{in_window} commits in 10 s at a limit of 100/s"


def test_drain_refuses_a_missing_rpc_or_unknown_pool(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    event.claim(5)
    event.set(commit_rpc_name="public.no_such_rpc")
    proc = intake("drain", "--once", config=event.config)
    assert proc.returncode == 2
    assert "public.no_such_rpc" in proc.stderr and "Traceback" not in proc.stderr
    event.set(commit_rpc_name="public.finalize_transaction")
    unknown = intake("drain", "--once", "--pool", "ghost", config=event.config)
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    assert event.queue_depth() == 5 and event.tickets() == {}


@pytest.mark.slow
def test_db2_down_mid_drain_retries_only_the_commit(workdir, db1_dsn):
    """DB2 goes away mid-drain: validated intents are not sent to the webhook again,
    and everything commits once when DB2 is back."""
    ledger_home = workdir / f"ledger-{time.monotonic_ns()}"
    ledger_home.mkdir(mode=0o755)
    clusters = EmbeddedClusters(ledger_home, EmbeddedSettings(synchronous_commit=False))
    db2 = clusters.ensure(("db2",))["db2"].dsn
    try:
        with WebhookServer(delay_ms=2) as webhook:
            event = make_event(
                workdir, db1_dsn, db2, webhook.url, 1500, batch_size=50, max_retries=100
            )
            keys = event.claim(1500)
            with draining(event, "--concurrency", "2"):
                wait_for(lambda: len(event.tickets()) >= 200, 30, "the first commits")
                clusters.halt(("db2",))
                # DB2 stays away until more intents wait validated than the
                # two batches (concurrency 2 x 50) it cut off: batches
                # validated after it had gone are handed back (not charged)
                # and wait for it.
                wait_for(
                    lambda: event.states().get("validated", 0) > 100,
                    60,
                    "validated intents waiting for DB2",
                )
                # While DB2 was away the webhook kept validating; those intents wait.
                assert event.states().get("validated", 0) > 0
                clusters.ensure(("db2",))
                wait_for(
                    lambda: event.queue_depth() == 0 and event.archived() == 1500,
                    90,
                    "the drain to finish after DB2 came back",
                )
            per_key = webhook.per_key()
        assert per_key == {key: 1 for key in keys}
        assert event.tickets() == {key: 1 for key in keys}
        assert event.states() == {"committed": 1500}
    finally:
        clusters.stop()


def running_workers(db1: str) -> int:
    with psycopg.connect(db1) as conn:
        [(count,)] = conn.execute(
            "select count(*) from intake.workers where stopped_at is null"
        ).fetchall()
    return count


@pytest.mark.slow
def test_pool_filter_and_pause_leave_other_intents_queued(workdir, db1_dsn, db2_dsn, webhook):
    spec = dict(validation_webhook_url=webhook.url, retry_base_seconds=0.2)
    config = write_config(
        workdir, db1_dsn, db2_dsn, [pool_spec("left", 30, **spec), pool_spec("right", 30, **spec)]
    )
    intake("up", config=config, check=True)
    left = Event(config, db1_dsn, db2_dsn, "left")
    right = Event(config, db1_dsn, db2_dsn, "right")
    left_keys = left.claim(30, prefix="l")
    right_keys = right.claim(30, prefix="r")

    with draining(left, "--pool", "left"):
        wait_for(lambda: len(left.tickets()) == 30, 30, "the left pool drained")
        time.sleep(1)
    assert set(left.tickets()) == set(left_keys)
    assert left.queue_depth() == 30  # the right pool's intents, untouched but for hand-backs

    left.set(paused=True)  # pauses both pools: `set` updates every row
    with draining(left):
        # Once the worker runs (registered), six turns of its loop (0.25 s
        # apart when idle): a worker that ignored the pause would have
        # committed by then.
        wait_for(lambda: running_workers(db1_dsn) == 1, 30, "the worker registered")
        time.sleep(1.5)
        assert len(left.tickets()) == 30
        left.set(paused=False)
        wait_for(lambda: left.queue_depth() == 0, 30, "the resumed pool drained")
    assert set(left.tickets()) == set(left_keys) | set(right_keys)


@pytest.mark.slow
def test_dlq_purge_needs_confirmation(workdir, db1_dsn, db2_dsn):
    with WebhookServer(fail_first=1000) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 3, max_retries=0)
        event.claim(3)
        with draining(event):
            wait_for(lambda: event.queue_depth("intents_dlq") == 3, 30, "3 dead letters")
    refused = intake("dlq", "purge", config=event.config)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert event.queue_depth("intents_dlq") == 3
    done = intake("dlq", "purge", "--yes", config=event.config, check=True)
    assert "purged 3 dead letters" in done.stdout
    assert event.queue_depth("intents_dlq") == 0
    unknown = intake("dlq", "replay", "999", config=event.config)
    assert unknown.returncode == 2 and "no dead letter with id 999" in unknown.stderr


@pytest.mark.slow
def test_slow_webhook_keeps_the_lease_so_no_second_worker_calls_it(workdir, db1_dsn, db2_dsn):
    # Each call takes 4 s, twice the visibility timeout: without lease
    # extension the other worker would read the same intents and call again.
    with WebhookServer(delay_ms=4000) as webhook:
        event = make_event(
            workdir, db1_dsn, db2_dsn, webhook.url, 40, visibility_timeout=2, batch_size=20
        )
        keys = event.claim(40)
        drain_all(event, 40, "--concurrency", "1", workers=2, timeout=60)
        assert webhook.per_key() == {key: 1 for key in keys}
    assert event.tickets() == {key: 1 for key in keys}


@pytest.mark.slow
def test_webhook_url_changed_live_is_used_at_the_next_batch(workdir, db1_dsn, db2_dsn):
    with WebhookServer() as first, WebhookServer() as second:
        event = make_event(workdir, db1_dsn, db2_dsn, first.url, 40, batch_size=10)
        event.claim(20, prefix="early")
        with draining(event, "--concurrency", "1"):
            wait_for(lambda: len(event.tickets()) == 20, 30, "the first 20 commits")
            intake(
                "config",
                "set",
                "drop",
                f"validation_webhook_url={second.url}",
                config=event.config,
                check=True,
            )
            time.sleep(1)
            late = event.claim(20, prefix="late")
            wait_for(lambda: len(event.tickets()) == 40, 30, "the last 20 commits")
        assert len(first.per_key()) == 20
        assert second.per_key() == {key: 1 for key in late}
