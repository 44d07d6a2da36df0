"""engine_metrics and `intake watch` at known states: every figure on screen is
checked against a real count of DB1's tables (which the collector never does)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml

from intake_cli.platform import embedded
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import make_event, start_drain, stop, wait_for
from tests.conftest import intake, pool_spec, write_config


def real_counts(dsn: str, pool_id: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        units = dict(
            conn.execute(
                "select status::text, count(*) from intake.allocations where pool_id = %s"
                " group by 1",
                (pool_id,),
            ).fetchall()
        )
        states = dict(
            conn.execute(
                "select state, count(*) from intake.intent_state where pool_id = %s group by 1",
                (pool_id,),
            ).fetchall()
        )
        [(depth,)] = conn.execute("select queue_length from pgmq.metrics('intents')").fetchall()
        [(dlq,)] = conn.execute("select queue_length from pgmq.metrics('intents_dlq')").fetchall()
    return {
        "available_slots": units.get("available", 0),
        "locked": units.get("locked", 0),
        "consumed": units.get("consumed", 0),
        "rejected": states.get("rejected", 0),
        "dead_lettered": states.get("dead", 0),
        "queue_depth": depth,
        "dlq_depth": dlq,
    }


def watch_once(config) -> tuple[dict, str]:
    figures = json.loads(intake("watch", "--once", "--json", config=config, check=True).stdout)
    screen = intake("watch", "--once", config=config, check=True).stdout
    return figures, screen


def pool_line(screen: str, pool_id: str) -> list[int]:
    [line] = [row for row in screen.splitlines() if row.strip().startswith(pool_id)]
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


def test_watch_once_shows_the_true_figures_after_seed_claim_and_drain(workdir, db1_dsn, db2_dsn):
    with WebhookServer(decline_share=0.2) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 500, batch_size=100)

        figures, screen = watch_once(event.config)
        assert figures["pools"][0]["available_slots"] == 500
        assert pool_line(screen, "drop") == [500, 0, 0, 0, 0]
        assert "workers: none registered" in screen

        event.claim(300)
        for _ in range(2):  # two batches of 100: 200 intents decided
            intake("drain", "--once", config=event.config, check=True)
        declined = sum(1 for c in webhook.calls()["calls"] if c["status"] == 402)

    truth = real_counts(db1_dsn, "drop")
    assert truth == {
        "available_slots": 200 + declined,
        "locked": 100,
        "consumed": 200 - declined,
        "rejected": declined,
        "dead_lettered": 0,
        "queue_depth": 100,
        "dlq_depth": 0,
    }
    assert 10 < declined < 80

    figures, screen = watch_once(event.config)
    [pool] = figures["pools"]
    assert {k: pool[k] for k in ("available_slots", "locked", "consumed", "rejected")} == {
        k: truth[k] for k in ("available_slots", "locked", "consumed", "rejected")
    }
    assert (figures["queue_depth"], figures["dlq_depth"]) == (100, 0)
    assert figures["schedule"]["mode"] == "none"  # test databases have no pg_cron
    assert not figures["stale"]
    assert pool_line(screen, "drop") == [
        truth["available_slots"],
        100,
        truth["consumed"],
        declined,
        0,
    ]
    assert re.search(r"queue 100\b", screen) and "DLQ 0" in screen

    # Each `drain --once` registered, heartbeat its counters and stopped.
    stopped = [w for w in figures["workers"] if w["state"] == "stopped"]
    assert len(stopped) == 2
    assert sum(w["committed"] for w in stopped) == 200 - declined
    assert sum(w["rejected"] for w in stopped) == declined

    status = json.loads(intake("status", "--json", config=event.config, check=True).stdout)
    [row] = status["pools"]
    assert (row["available"], row["locked"], row["consumed"], row["rejected"]) == (
        truth["available_slots"],
        100,
        truth["consumed"],
        declined,
    )


def test_a_running_worker_is_listed_alive_and_the_frame_fits_80_columns(workdir, db1_dsn, db2_dsn):
    with WebhookServer() as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 50)
        worker = start_drain(event, "--pool", "drop")
        try:
            for _ in range(50):
                figures, screen = watch_once(event.config)
                if figures["workers"]:
                    break
            [listed] = figures["workers"]
            assert listed["state"] == "alive" and listed["pool_filter"] == "drop"
            assert re.search(rf":{worker.pid}\s+drop\s+.*alive", screen)
            lines = screen.splitlines()
            assert max(len(line) for line in lines) <= 80 and len(lines) <= 24
        finally:
            stop(worker)
    figures, _ = watch_once(event.config)
    assert [w["state"] for w in figures["workers"]] == ["stopped"]


def test_collector_folds_outcomes_and_prunes_old_rows(db1_dsn):
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into intake.outcome_deltas (pool_id, committed, webhook_calls)"
            " values ('p', 3, 3), ('p', 2, 2)"
        )
        conn.execute(
            "insert into intake.engine_metrics (collected_at, pool_id, inventory,"
            " available_slots, locked, consumed, rejected, retried, dead_lettered, paused,"
            " queue_depth, in_flight, dlq_depth, processing_velocity, webhook_calls,"
            " webhook_errors, collect_ms)"
            " values (now() - interval '25 hours', 'p', 1, 1, 0, 0, 0, 0, 0, false,"
            " 0, 0, 0, 0, 0, 0, 1)"
        )
        conn.execute("select intake.collect_metrics()")
        assert conn.execute("select count(*) from intake.outcome_deltas").fetchone() == (0,)
        assert conn.execute(
            "select committed, webhook_calls from intake.pool_totals where pool_id = 'p'"
        ).fetchone() == (5, 5)
        conn.execute("select intake.maintain_telemetry()")
        assert conn.execute("select count(*) from intake.engine_metrics").fetchone() == (0,)


def test_collection_never_reads_the_inventory(workdir, db1_dsn, db2_dsn):
    """No COUNT over allocations: the collector's cost does not grow with the pool."""
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("big", 20_000)])
    intake("up", config=config, check=True)
    with psycopg.connect(db1_dsn) as conn:
        assert conn.execute("select intake.collect_metrics()").fetchone() == (1,)
        scans = conn.execute(
            "select seq_scan, idx_scan from pg_stat_xact_user_tables"
            " where schemaname = 'intake' and relname = 'allocations'"
        ).fetchone()
        assert scans == (0, 0)
        [(available,)] = conn.execute(
            "select available_slots from intake.engine_metrics where pool_id = 'big'"
            " order by collected_at desc limit 1"
        ).fetchall()
        assert available == 20_000


@pytest.mark.slow
@pytest.mark.serial
# scripts/test.sh runs it in a pytest of its own beside the serial pass: it
# waits for pg_cron's next minute, idle but for a collection every 5 s and a
# query a second, and that wait need not add to the serial tests' time.
@pytest.mark.real_minute
def test_pg_cron_14_fallback_collects_every_five_seconds_across_minutes(workdir):
    """The real pg_cron of this machine (1.4: minute schedules) through `intake up`."""
    # Not a skip: the suite's machine must have pg_cron, or this path goes untested.
    assert embedded.pg_cron_available(embedded.pg_bindir()), (
        "pg_cron is not installed: run scripts/bootstrap.sh as root "
        "(or apt-get install postgresql-15-cron)"
    )
    event = workdir / "cron-event"
    event.mkdir(mode=0o755)
    config = event / "intake.yaml"
    config.write_text(yaml.safe_dump({"pools": [pool_spec("tick", 100)]}))
    intake("up", config=config, check=True)
    try:
        status = json.loads(intake("status", "--json", config=config, check=True).stdout)
        assert status["metrics"]["mode"] == "minute-loop"
        assert status["pg_cron"].startswith("1.4")
        db1 = embedded.EmbeddedClusters(event / ".intake").load()["db1"]
        dsn = db1.dsn

        def collected() -> list:
            with psycopg.connect(dsn) as conn:
                return [
                    row[0]
                    for row in conn.execute(
                        "select collected_at from intake.engine_metrics order by 1"
                    )
                ]

        # The rest of this minute as the minute job would run it, so the test
        # sees the hand-over to pg_cron's next run without idling up to 60 s.
        # Not in a minute's last 15 s: the kick's own first row would then
        # stand in for the next boundary's (rows under 2.5 s apart are one),
        # and too few boundaries would be left to check before pg_cron's.
        if datetime.now(UTC).second >= 45:
            time.sleep(61 - datetime.now(UTC).second)
        kicked_at = datetime.now(UTC)
        rest_of_minute = threading.Thread(
            target=lambda: psycopg.connect(dsn, autocommit=True).execute(
                "call intake.collect_metrics_for_a_minute(5)"
            )
        )
        rest_of_minute.start()
        # The kick takes the next minute's first tick too; the two after it
        # can only come from pg_cron's run.
        from_pg_cron = kicked_at.replace(second=0, microsecond=0) + timedelta(minutes=1, seconds=9)
        wait_for(
            lambda: (rows := collected()) and rows[-1] >= from_pg_cron,
            timeout=100,
            what="a metrics row written by pg_cron's minute job",
            interval=1,
        )
        rest_of_minute.join()
        times = collected()
        # `intake up` and the kick above may each collect at once, off the
        # 5 s grid (the kick skips when up's row is under 2.5 s old); every
        # row from the kick's first 5 s boundary on is on it, pg_cron's too.
        first_tick = (math.floor(kicked_at.timestamp() / 5) + 1) * 5
        ticks = [t.timestamp() for t in times if t.timestamp() >= first_tick - 0.5]
        # One row for each 5 s boundary, none skipped and none twice, each
        # written at its boundary or a little after: a loaded machine once
        # woke the collector 1.0 s late, and the next row was on time (a gap
        # of 3.997 s, the grid kept).
        slots = [round(t / 5) for t in ticks]
        late = [round(t - 5 * slot, 3) for t, slot in zip(ticks, slots, strict=True)]
        assert len(ticks) >= 3 and slots == list(range(slots[0], slots[0] + len(slots))), ticks
        assert all(-0.25 <= lateness < 1.5 for lateness in late), late

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select cron.schedule('not-ours', '0 0 1 1 *', 'select 1')")
            for jobname in ("intake-metrics", "not-ours"):
                conn.execute(
                    "insert into cron.job_run_details (jobid, runid, database, username,"
                    " command, status, start_time)"
                    " select jobid, -jobid, 'intake', 'intake', command, 'succeeded',"
                    " now() - interval '2 hours' from cron.job where jobname = %s",
                    (jobname,),
                )
            conn.execute("select intake.maintain_telemetry()")
            old = conn.execute(
                "select j.jobname from cron.job_run_details d join cron.job j using (jobid)"
                " where d.start_time < now() - interval '1 hour'"
            ).fetchall()
            assert old == [("not-ours",)]
            recent = conn.execute(
                "select count(*) from cron.job_run_details d join cron.job j using (jobid)"
                " where j.jobname = 'intake-metrics'"
            ).fetchone()[0]
            assert recent >= 1
    finally:
        intake("down", "--force", config=config, check=True)
