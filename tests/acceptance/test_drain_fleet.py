"""A fleet on one queue: eight `intake drain` processes, a webhook that fails some
first calls and declines some keys. Every intent is committed once in DB2, and
DB1's counts are exact: units consumed or released, messages archived once,
the queue and the dead-letter queue empty, and DB1's record of webhook calls
the webhook's own."""

from __future__ import annotations

import psycopg
import pytest

from intake_cli.tools.testhook import declines, fails_first_call
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import drain_all, make_event

pytestmark = pytest.mark.slow

INTENTS = 3000
WORKERS = 8
FAIL_SHARE = 0.1
DECLINE_SHARE = 0.05


def test_eight_workers_on_one_queue_commit_each_intent_once(workdir, db1_dsn, db2_dsn):
    with WebhookServer(fail_share=FAIL_SHARE, decline_share=DECLINE_SHARE) as webhook:
        # Small batches: every worker's slots take many batches from the same head.
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, INTENTS, batch_size=50)
        keys = event.claim(INTENTS)
        drain_all(event, INTENTS, "--concurrency", "2", workers=WORKERS, timeout=240)
        per_key = webhook.per_key()

    declined = {key for key in keys if declines(key, DECLINE_SHARE)}
    sold = set(keys) - declined
    assert 0 < len(declined) < INTENTS // 10

    # DB2: one ticket and one legacy order per sold intent, nothing else.
    assert event.tickets() == {key: 1 for key in sold}
    with psycopg.connect(db2_dsn) as conn:
        rows, distinct = conn.execute(
            "select count(*), count(distinct idempotency_key) from public.tickets"
        ).fetchone()
        orders = conn.execute("select count(*) from public.legacy_orders").fetchone()[0]
    assert (rows, distinct, orders) == (len(sold), len(sold), len(sold))

    # The webhook: a key whose first call failed was asked exactly twice, any
    # other exactly once, whichever worker asked.
    assert per_key == {key: 2 if fails_first_call(key, FAIL_SHARE) else 1 for key in keys}

    # DB1: exact counts.
    assert event.units() == {"consumed": len(sold), "available": len(declined)}
    assert event.states() == {"committed": len(sold), "rejected": len(declined)}
    assert event.queue_depth() == 0
    assert event.queue_depth("intents_dlq") == 0
    assert event.archived() == INTENTS
    with psycopg.connect(db1_dsn) as conn:
        archived_once = conn.execute(
            "select count(distinct msg_id) = count(*) from pgmq.a_intents"
        ).fetchone()[0]
        calls = dict(
            conn.execute(
                "select idempotency_key::text, webhook_calls from intake.intent_state"
            ).fetchall()
        )
    assert archived_once
    assert calls == per_key
