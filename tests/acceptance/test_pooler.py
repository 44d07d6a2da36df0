"""The whole life of an event through PgBouncer in transaction mode (the
stand-in for Supavisor's port 6543): every command reaches DB1 and DB2 only
through the pooler, and the ledger is exact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from intake_cli.tools.pooler import pgbouncer, pgbouncer_path
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, draining, stop, wait_for
from tests.conftest import intake, new_database, pool_spec, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        pgbouncer_path() is None,
        reason="pgbouncer is not installed (scripts/test-deps.sh installs it as root)",
    ),
]


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def _running(workers: list[subprocess.Popen[str]]) -> bool:
    """True while every drain worker runs; a worker that died fails the test with its log."""
    for proc in workers:
        if proc.poll() is not None:
            log = Path(proc.log.name).read_text()  # type: ignore[attr-defined]
            raise AssertionError(f"a drain worker exited {proc.returncode}: {log[-3000:]}")
    return True


def test_an_event_lives_and_drains_exactly_once_through_a_transaction_pooler(
    workdir, cluster, db2_cluster
):
    db1_direct, db2_direct = new_database(cluster), new_database(db2_cluster)
    with (
        pgbouncer(cluster) as pooled1,
        pgbouncer(db2_cluster) as pooled2,
        WebhookServer(fail_share=0.1) as flaky,
        WebhookServer(fail_first=1000) as failing,
    ):
        db1 = pooled1.dsn_for(_dbname(db1_direct))
        db2 = pooled2.dsn_for(_dbname(db2_direct))
        common = {"retry_base_seconds": 0.2, "retry_max_seconds": 1, "batch_size": 100}
        config = write_config(
            workdir,
            db1,
            db2,
            [
                pool_spec("drop", 1000, validation_webhook_url=flaky.url, **common),
                # Every first answer fails and nothing is retried: straight to the DLQ.
                pool_spec("late", 20, validation_webhook_url=failing.url, max_retries=0, **common),
            ],
        )
        intake("up", config=config, check=True)
        drop = Event(config, db1, db2, "drop")

        with draining(drop, "--concurrency", "4", workers=2) as workers:
            # The herd: twice as many buyers as units, while the drain runs.
            herd = json.loads(
                intake(
                    "burst", "drop", "--users", "2000", "--concurrency", "64", "--json",
                    config=config, check=True,
                ).stdout
            )  # fmt: skip
            assert herd["outcomes"] == {"claimed": 1000, "sold_out": 1000}
            late = json.loads(
                intake(
                    "burst", "late", "--users", "20", "--concurrency", "4", "--json",
                    config=config, check=True,
                ).stdout
            )  # fmt: skip
            assert late["outcomes"] == {"claimed": 20}

            wait_for(
                lambda: _running(workers) and drop.queue_depth("intents_dlq") == 20,
                60,
                "20 dead letters",
            )
            failing.script(fail_first=0)
            replay = intake("dlq", "replay", "--all", config=config, check=True)
            assert "20" in replay.stdout

            wait_for(
                lambda: (
                    _running(workers)
                    and len(drop.tickets()) == 1020
                    and drop.queue_depth() == 0
                    and drop.queue_depth("intents_dlq") == 0
                ),
                90,
                "1,020 intents committed",
            )
            frame = json.loads(
                intake("watch", "--once", "--json", config=config, check=True).stdout
            )
            status = json.loads(intake("status", "--json", config=config, check=True).stdout)
            for proc in workers:
                stop(proc)

        # Retries happened (a tenth of calls fail), and each key was validated once.
        assert any(call["status"] == 503 for call in flaky.calls()["calls"])
        assert sum(1 for n in flaky.per_key().values() if n > 1) > 0
        tickets = drop.tickets()
        assert len(tickets) == 1020
        assert set(tickets.values()) == {1}  # no duplicates in DB2
        assert drop.states() == {"committed": 1020}
        units = {
            p["pool_id"]: (p["consumed"], p["available"], p["locked"]) for p in status["pools"]
        }
        assert units == {"drop": (1000, 0, 0), "late": (20, 0, 0)}
        assert (status["queue"]["depth"], status["dlq"]["depth"]) == (0, 0)
        assert {p["pool_id"] for p in frame["pools"]} == {"drop", "late"}

        down = intake("down", "--force", config=config)
        assert down.returncode == 0, down.stderr
        # Nothing in either pooler's log says a statement was refused.
        for pooler in (pooled1, pooled2):
            assert "prepared statement" not in pooler.log()
