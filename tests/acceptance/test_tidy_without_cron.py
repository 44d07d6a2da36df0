"""Housekeeping where pg_cron does not run it: the drain workers do.

Without pg_cron's intake-maintenance job, nothing put units skipped by
aborted claims back on sale (buyers heard `sold_out` while one was left,
until the next `intake up`), and stopped workers and old metric rows stayed.
A running `intake drain` now does that housekeeping once a minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from intake_cli.engine import claims
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import draining, make_event, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def test_a_drain_worker_puts_skipped_units_back_where_no_cron_job_does(
    workdir, db1_dsn, db2_dsn, webhook
):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 3)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('cron.job')").fetchone()[0] is None
        # A claim that rolls back after drawing its number: unit 1 stays
        # available below the sequence, where no claim looks.
        with psycopg.connect(db1_dsn) as aborted:
            assert claims.claim(aborted, "drop", "gone").unit_no == 1
            aborted.rollback()
        event.claim(2)
        assert claims.claim(conn, "drop", "early").outcome == "sold_out"
        conn.execute(
            "insert into intake.workers (worker_id, hostname, pid, concurrency, stopped_at)"
            " values ('old:1:x', 'old', 1, 1, now() - interval '2 hours')"
        )

        with draining(event):
            wait_for(
                lambda: (
                    conn.execute("select count(*) from intake.released_units").fetchone()[0] == 1
                ),
                30,
                "unit 1 back on the release list",
            )
            late = claims.claim(conn, "drop", "late")
            assert (late.outcome, late.unit_no) == ("claimed", 1)
            gone = conn.execute(
                "select count(*) from intake.workers where worker_id = 'old:1:x'"
            ).fetchone()[0]
            assert gone == 0
            wait_for(lambda: event.queue_depth() == 0, 60, "the queue drained")
    assert sorted(event.tickets().values()) == [1, 1, 1]
    assert event.units() == {"consumed": 3}
