"""A drain whose commit RPC never returns for one payload is held about
db2.commit_timeout_seconds, once: the other intents of the batch commit in
that batch, once each, and the slow one is dead-lettered alone with the
timeout as its reason (docs/commit-rpc.md, "The statement timeout")."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from intake_cli.engine.drain.worker import Worker
from intake_cli.platform import config
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.test_commit_rpc import dead_letters, event_with, rpc

T = 2.0


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, dict]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((record.getMessage(), getattr(record, "fields", {})))


def test_a_commit_that_never_returns_holds_the_drain_one_timeout(workdir, db1_dsn, db2_dsn):
    rpc(
        db2_dsn,
        "if payload ->> 'user_id' = 'user-3' then perform pg_sleep(60); end if;"
        " return public.finalize_transaction(payload);",
    )
    with WebhookServer() as webhook:
        event = event_with(
            workdir,
            db1_dsn,
            db2_dsn,
            webhook.url,
            6,
            db2_settings={"commit_timeout_seconds": T},
            commit_rpc_name="public.ledger_rpc",
            max_retries=0,
            # A lease shorter than the commit: it must be renewed, not lapse.
            visibility_timeout=1,
        )
        keys = event.claim(6)
        log = logging.getLogger("test-commit-timeout")
        log.setLevel(logging.DEBUG)
        recorder = Recorder()
        log.addHandler(recorder)
        worker = Worker(config.load(event.config), db1_dsn, db2_dsn, log, once=True)
        started = time.monotonic()
        stats = asyncio.run(worker.run())
        held = time.monotonic() - started
        log.removeHandler(recorder)

    # The old commit path took the batch statement's T, then the payload's own T.
    assert held < 1.5 * T, held
    [batch] = [fields for name, fields in recorder.events if name == "batch"]
    assert batch["commit_ms"] < 1.5 * T * 1000, batch
    assert (stats.counts["committed"], stats.counts["dead"]) == (5, 1)
    # The lease outlived the commit by renewals: nobody could read the intents meanwhile.
    assert any(name == "lease_extended" for name, _ in recorder.events)

    tickets = event.tickets()
    assert len(tickets) == 5 and set(tickets.values()) == {1}
    assert set(tickets) < set(keys)
    [(state, error, user)] = dead_letters(event)
    assert (state, user) == ("validated", "user-3")
    assert error.startswith("commit RPC: 57014: canceling statement due to statement timeout")
    assert "db2.commit_timeout_seconds, 2 s" in error
    assert event.queue_depth() == 0
    assert event.units() == {"consumed": 5, "locked": 1}
    with psycopg.connect(db2_dsn) as conn:
        sleeping = conn.execute(
            "select count(*) from pg_stat_activity where query like '%%ledger_rpc%%'"
            " and state = 'active' and pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert sleeping == 0
