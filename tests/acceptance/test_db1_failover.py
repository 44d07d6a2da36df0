"""DB1's host is lost mid-herd and its synchronous standby promoted: nothing is
sold twice, no acknowledged claim is lost, and the sale goes on within seconds.

The event is embedded with `embedded.standby: true`: `intake up` starts DB1
with a synchronous streaming standby and creates the pool while it streams
(on PostgreSQL 15 an unlogged unit sequence made then could never be read
on the promoted node). Two real `intake drain` workers and the buyers reach
DB1 through the multi-host DSN intake builds (`target_session_attrs=
read-write`), as they would reach a Patroni cluster. Mid-herd the primary's
postmaster is SIGKILLed, its data directory removed (the host is gone) and
the standby promoted; nobody tells the workers or the buyers anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter

import psycopg
import pytest
import yaml

from intake_cli.platform import standby
from intake_cli.platform.embedded import EmbeddedClusters, db1_dsn
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.crash_support import CrashEvent, Herd, assert_exact_sale, crash_event
from tests.acceptance.drain_support import Event, draining, wait_for
from tests.conftest import intake

pytestmark = pytest.mark.slow

UNITS = 300
STANDBY = {"standby": True}
# From the promotion to the first claim that gets a unit: the workers find
# the new primary (a probe every 0.25 s) and rebuild the pool there.
SELLING_AGAIN_WITHIN_S = 5.0


@pytest.mark.slow
@pytest.mark.serial
def test_losing_db1s_host_mid_herd_sells_each_unit_once_and_resumes_within_seconds(workdir):
    with (
        WebhookServer(fail_share=0.1) as webhook,
        crash_event(workdir, "failover", webhook.url, UNITS, embedded={"standby": True}) as event,
    ):
        clusters = EmbeddedClusters(event.state_dir)
        both_nodes = db1_dsn(clusters.load())
        assert "target_session_attrs=read-write" in both_nodes
        before = event.units()
        with draining(Event(event.config, both_nodes, event.db2, event.pool_id), workers=2):
            herd = Herd(both_nodes, event.pool_id, hold_at=2 * UNITS // 3)
            users = [f"buyer-{n}" for n in range(UNITS)]
            runner = threading.Thread(
                target=lambda: asyncio.run(herd.run(users, concurrency=8, pace_s=0.05)),
                daemon=True,
            )
            runner.start()
            wait_for(lambda: herd.claimed >= UNITS // 3, 60, "a third of the herd served")
            promotion = standby.promote(clusters, how="kill", lose_host=True)
            promoted_at = time.monotonic()
            herd.resume.set()
            runner.join(timeout=180)
            assert not runner.is_alive(), "the herd did not finish"
            again = min(t for t in herd.held_at if t > promoted_at) - promoted_at
            print(
                f"failover: primary killed and standby promoted in {promotion.total_s:.2f} s; "
                f"first claim holding a unit {again:.2f} s after the promotion"
            )
            assert again < SELLING_AGAIN_WITHIN_S, again
            # The promoted node kept no standby to wait for: writes go through.
            assert_exact_sale(event, herd, before, UNITS, saw_recovering=False)
        status = event.rows(event.db1, "select count(*) from intake.inventory_rebuilds")
        assert status[0][0] >= 1


def _a_dsn_that_reaches_only_the_standby_is_refused_saying_so(event: CrashEvent) -> None:
    """Without target_session_attrs, a standby accepts the connection and fails the
    first write with "cannot access temporary or unlogged relations during
    recovery". intake says what is wrong instead, and changes nothing."""
    node = EmbeddedClusters(event.state_dir).load()[standby.STANDBY]
    document = yaml.safe_load(event.config.read_text())
    document["db1"] = {"dsn": node.dsn}
    config = event.config.parent / "standby-only.yaml"
    config.write_text(yaml.safe_dump(document))
    before = event.units()
    commands = [("status",), ("claim", "drop", "buyer-1"), ("drain", "--connect-timeout", "1")]
    for args in commands:
        proc = intake(*args, config=config)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert "is a standby in recovery" in proc.stderr, (args, proc.stderr)
        assert "target_session_attrs=read-write" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert event.units() == before


def test_intake_failover_and_status_show_the_standby_before_and_after(workdir):
    with (
        WebhookServer() as webhook,
        crash_event(workdir, "failover-cli", webhook.url, 20, embedded={"standby": True}) as event,
    ):
        # Before the failover, on the same event (a standby costs a cluster):
        # the standby's own DSN is refused, and nothing changes.
        _a_dsn_that_reaches_only_the_standby_is_refused_saying_so(event)

        def status() -> dict:
            proc = intake("status", "--json", config=event.config, check=True)
            return json.loads(proc.stdout)

        replication = status()["replication"]
        assert replication["verdict"] == "synchronous"
        assert [s["sync_state"] for s in replication["standbys"]] == ["sync"]
        assert intake("claim", "drop", "buyer-1", config=event.config).returncode == 0

        proc = intake("failover", "--json", config=event.config, check=True)
        promotion = json.loads(proc.stdout)
        assert (promotion["how"], promotion["lost_host"]) == ("kill", True)
        after = status()
        assert after["replication"]["verdict"] == "none"
        assert after["pools"][0]["recovering"] is True
        # Nothing was lost: the rebuilt pool still holds buyer-1's unit.
        recovered = intake("recover", "--json", config=event.config, check=True)
        assert json.loads(recovered.stdout)["pools"][0]["rebuilt"]["locked"] == 1
        again = intake("claim", "drop", "buyer-1", "--json", config=event.config)
        assert json.loads(again.stdout)["outcome"] == "already_claimed"
        assert intake("claim", "drop", "buyer-2", config=event.config).returncode == 0

        # The standby is used up until the next `intake up` makes a new one.
        refused = intake("failover", config=event.config)
        assert refused.returncode == 2 and "no standby of DB1" in refused.stderr
        intake("up", config=event.config, check=True)
        assert status()["replication"]["verdict"] == "synchronous"


def _walsender_pid(primary_dsn: str) -> int:
    with psycopg.connect(primary_dsn, autocommit=True) as conn:
        row = conn.execute("select pid from pg_stat_replication").fetchone()
    assert row is not None, "no standby streams from DB1"
    return int(row[0])


@pytest.mark.parametrize("fence", ["all", "off"])
def test_an_asynchronous_standby_that_lags_and_is_promoted(workdir, fence):
    """The documented behaviour with asynchronous replication.

    The standby stops receiving (DB1's WAL sender frozen), ten buyers claim,
    a drain runs, then DB1's host is lost and the lagging standby promoted.
    The ten acknowledged claims are lost either way: only synchronous
    replication keeps them. With the drain's replication fence (the default),
    DB2 got none of them, so when the ten buyers claim again on the new
    primary nothing is sold twice. Without it (`replication_fence: off`), the
    drain had committed them and their units are sold a second time: what
    the fence is for.
    """
    with (
        WebhookServer() as webhook,
        crash_event(workdir, f"async-{fence}", webhook.url, 50, embedded=STANDBY) as event,
    ):
        document = yaml.safe_load(event.config.read_text())
        document["db1"] = {"replication_fence": fence}
        event.config.write_text(yaml.safe_dump(document))
        nodes = EmbeddedClusters(event.state_dir).load()
        with psycopg.connect(nodes["db1"].dsn, autocommit=True) as conn:
            conn.execute("alter system set synchronous_standby_names = ''")
            conn.execute("select pg_reload_conf()")
        wait_for(
            lambda: (
                json.loads(intake("status", "--json", config=event.config).stdout)["replication"][
                    "verdict"
                ]
                == "asynchronous"
            ),
            30,
            "the standby to stream asynchronously",
        )
        sender = _walsender_pid(nodes["db1"].dsn)
        os.kill(sender, signal.SIGSTOP)
        try:
            users = [f"buyer-{n}" for n in range(10)]
            for user in users:
                assert intake("claim", "drop", user, config=event.config).returncode == 0
            drained = intake("drain", "--once", "--json", config=event.config, check=True)
            counts = json.loads(drained.stdout)
            if fence == "all":
                assert (counts["committed"], counts["fenced"]) == (0, 10), counts
                assert event.tickets() == []
            else:
                assert counts["committed"] == 10, counts
                assert len(event.tickets()) == 10
            standby.promote(EmbeddedClusters(event.state_dir), how="kill", lose_host=True)
        finally:
            # Killed, never continued: what it holds must not reach the standby.
            os.kill(sender, signal.SIGKILL)
        intake("recover", config=event.config, check=True)
        # The same ten buyers, on the promoted node: their first claims were lost with
        # the primary, so each claims again and gets a unit.
        for user in users:
            again = intake("claim", "drop", user, "--json", config=event.config)
            assert json.loads(again.stdout)["outcome"] == "claimed", again.stdout
        intake("drain", "--once", config=event.config, check=True)
        tickets = event.tickets()
        by_unit = Counter(resource for _, _, _, resource in tickets)
        sold_twice = sum(1 for n in by_unit.values() if n > 1)
        assert sold_twice == (0 if fence == "all" else 10), by_unit
        assert len(tickets) == (10 if fence == "all" else 20)
        # DB1 sees it too, by comparing with DB2's ledger.
        audit = intake("audit", "--json", config=event.config)
        assert audit.returncode == (0 if fence == "all" else 1), audit.stdout + audit.stderr
