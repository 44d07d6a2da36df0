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
import threading
import time

import yaml

from intake_cli.platform import standby
from intake_cli.platform.embedded import EmbeddedClusters, db1_dsn
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.crash_support import Herd, assert_exact_sale, crash_event
from tests.acceptance.drain_support import Event, draining, wait_for
from tests.conftest import run_intake

UNITS = 300
# From the promotion to the first claim that gets a unit: the workers find
# the new primary (a probe every 0.25 s) and rebuild the pool there.
SELLING_AGAIN_WITHIN_S = 5.0


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


def test_a_dsn_that_reaches_only_the_standby_is_refused_saying_so(workdir):
    """Without target_session_attrs, a standby accepts the connection and fails the
    first write with "cannot access temporary or unlogged relations during
    recovery". intake says what is wrong instead, and changes nothing."""
    with (
        WebhookServer() as webhook,
        crash_event(workdir, "standby-dsn", webhook.url, 10, embedded={"standby": True}) as event,
    ):
        node = EmbeddedClusters(event.state_dir).load()[standby.STANDBY]
        document = yaml.safe_load(event.config.read_text())
        document["db1"] = {"dsn": node.dsn}
        config = event.config.parent / "standby-only.yaml"
        config.write_text(yaml.safe_dump(document))
        before = event.units()
        commands = [("status",), ("claim", "drop", "buyer-1"), ("drain", "--connect-timeout", "1")]
        for args in commands:
            proc = run_intake(*args, config=config)
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

        def status() -> dict:
            proc = run_intake("status", "--json", config=event.config, check=True)
            return json.loads(proc.stdout)

        replication = status()["replication"]
        assert replication["verdict"] == "synchronous"
        assert [s["sync_state"] for s in replication["standbys"]] == ["sync"]
        assert run_intake("claim", "drop", "buyer-1", config=event.config).returncode == 0

        proc = run_intake("failover", "--json", config=event.config, check=True)
        promotion = json.loads(proc.stdout)
        assert (promotion["how"], promotion["lost_host"]) == ("kill", True)
        after = status()
        assert after["replication"]["verdict"] == "none"
        assert after["pools"][0]["recovering"] is True
        # Nothing was lost: the rebuilt pool still holds buyer-1's unit.
        recovered = run_intake("recover", "--json", config=event.config, check=True)
        assert json.loads(recovered.stdout)["pools"][0]["rebuilt"]["locked"] == 1
        again = run_intake("claim", "drop", "buyer-1", "--json", config=event.config)
        assert json.loads(again.stdout)["outcome"] == "already_claimed"
        assert run_intake("claim", "drop", "buyer-2", config=event.config).returncode == 0

        # The standby is used up until the next `intake up` makes a new one.
        refused = run_intake("failover", config=event.config)
        assert refused.returncode == 2 and "no standby of DB1" in refused.stderr
        run_intake("up", config=event.config, check=True)
        assert status()["replication"]["verdict"] == "synchronous"
