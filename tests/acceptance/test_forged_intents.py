"""Only intents DB1's claim path issued, and that still hold their unit, are committed.

Anything else written into the queue (a new key for a unit already sold,
another buyer's unit, a unit never claimed, a wrong resource id, a unit past
the inventory, a pool that does not exist, a malformed message) goes to the
DLQ marked refused, with the reason, and is never sent to the webhook or DB2;
the genuine intents of the same batch commit as usual.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from intake_cli.engine.drain.store import PgStore
from intake_cli.engine.drain.worker import Worker
from intake_cli.platform import config
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, _rows, drain_all, make_event
from tests.conftest import intake


@pytest.fixture
def webhook():
    with WebhookServer() as server:
        yield server


def queued_messages(event: Event) -> dict[int, dict[str, Any]]:
    """The intents waiting in the queue, by unit number."""
    return {
        message["unit_no"]: message
        for (message,) in _rows(event.db1, "select message from pgmq.q_intents")
    }


def units(event: Event) -> dict[int, tuple]:
    return {
        row[0]: tuple(row[1:])
        for row in _rows(
            event.db1,
            "select unit_no, status::text, locked_by, idempotency_key::text, resource_id::text"
            " from intake.allocations where pool_id = %s",
            (event.pool_id,),
        )
    }


def send(event: Event, messages: list[dict[str, Any]]) -> None:
    """Write messages straight into the queue, as anything with access to it could."""
    with psycopg.connect(event.db1, autocommit=True) as conn:
        for message in messages:
            conn.execute("select pgmq.send('intents', %s)", (Jsonb(message),))


def forge(genuine: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**genuine, "idempotency_key": str(uuid.uuid4()), **changes}


def drain_batch(event: Event, read: int | None) -> dict[str, int]:
    """One batch of `intake drain --once`, in this process: what the tests here
    look at is what a batch does with each message, not the worker's process.
    Every message waiting is read (`read` of them, when given; all fit in the
    default batch of 100): the queue is left empty."""
    stats = json.loads(intake("drain", "--once", "--json", config=event.config, check=True).stdout)
    assert read is None or stats["read"] == read, stats
    assert event.queue_depth() == 0
    return stats


def dead_letters(event: Event) -> list[dict[str, Any]]:
    listed = intake("dlq", "list", "--json", config=event.config, check=True).stdout
    return json.loads(listed)


@pytest.mark.slow
def test_forged_messages_are_refused_and_genuine_ones_in_the_same_batch_commit(
    workdir, db1_dsn, db2_dsn, webhook
):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 10)
    sold = event.claim(2, prefix="early")
    drain_batch(event, 2)
    sold_message = _rows(
        db1_dsn, "select message from pgmq.a_intents where message ->> 'unit_no' = '1'"
    )[0][0]
    webhook.reset()

    genuine_keys = event.claim(3, prefix="buyer")
    queued = queued_messages(event)
    assert sorted(queued) == [3, 4, 5]
    before = units(event)
    free_unit = before[8]
    # Units 1-2 are sold, 3-5 held by this batch's buyers, 6-10 on sale.
    forged = {
        "new key for a sold unit": forge(sold_message, user_id="mallory"),
        "another buyer's unit, new key": forge(queued[3], user_id="mallory"),
        "another buyer's unit, their key": {**queued[4], "user_id": "mallory"},
        "a unit never claimed": forge(
            queued[5], unit_no=8, resource_id=free_unit[3], user_id="mallory"
        ),
        "a wrong resource_id": {**queued[5], "resource_id": str(uuid.uuid4())},
        "a unit past the inventory": forge(queued[5], unit_no=11, user_id="mallory"),
        "an unknown pool": forge(queued[5], pool_id="ghost", user_id="mallory"),
        "a malformed unit number": forge(queued[5], unit_no="7", user_id="mallory"),
    }
    send(event, list(forged.values()))
    # The genuine and the forged are read in one batch.
    assert event.queue_depth() == 11

    drain_batch(event, 11)

    # Each genuine intent sold once; nothing forged reached the webhook or DB2.
    assert event.tickets() == {key: 1 for key in sold + genuine_keys}
    assert webhook.per_key() == {key: 1 for key in genuine_keys}
    assert _rows(db2_dsn, "select count(*) from public.tickets where user_id = 'mallory'") == [(0,)]
    after = units(event)
    assert {n: u[0] for n, u in after.items()} == {
        **{n: "consumed" for n in range(1, 6)},
        **{n: "available" for n in range(6, 11)},
    }
    assert {n: after[n][1:] for n in range(3, 6)} == {n: before[n][1:] for n in range(3, 6)}
    # A copied key leaves the real intent's state alone; a forged key gets none.
    assert event.states() == {"committed": 5}
    assert set(_rows(db1_dsn, "select idempotency_key::text from intake.intent_state")) == {
        (key,) for key in sold + genuine_keys
    }

    letters = {
        (str(item["intent"]["unit_no"]), item["intent"]["pool_id"], item["intent"]["user_id"]): item
        for item in dead_letters(event)
    }
    assert len(letters) == len(forged)
    assert {item["state"] for item in letters.values()} == {"refused"}
    reasons = {key: letters[key]["last_error"] for key in letters}
    expected = {
        ("1", "drop", "mallory"): "unit 1 of pool drop is held under another idempotency key",
        ("3", "drop", "mallory"): "unit 3 of pool drop is held under another idempotency key",
        ("4", "drop", "mallory"): "unit 4 of pool drop is held by another buyer",
        ("8", "drop", "mallory"): "unit 8 of pool drop is not claimed (available)",
        ("5", "drop", queued[5]["user_id"]): "unit 5 of pool drop has another resource_id",
        ("11", "drop", "mallory"): "unit 11 of pool drop does not exist",
        ("5", "ghost", "mallory"): "pool 'ghost' is not provisioned in DB1",
        ("7", "drop", "mallory"): "malformed intent message: unit_no is not a unit number",
    }
    assert set(reasons) == set(expected), reasons
    for key, fragment in expected.items():
        assert fragment in reasons[key], (key, reasons[key])
    # Refused messages are deleted, not archived: the archive is what an
    # inventory rebuild reads as claims.
    assert event.archived() == 5

    # Replayed, they are checked again, refused again, and still change nothing.
    intake("dlq", "replay", "--all", config=event.config, check=True)
    drain_batch(event, None)
    assert len(dead_letters(event)) == len(forged)
    assert event.tickets() == {key: 1 for key in sold + genuine_keys}
    assert event.states() == {"committed": 5}
    assert webhook.per_key() == {key: 1 for key in genuine_keys}


@pytest.mark.slow
def test_a_copy_of_a_finished_intent_is_refused_and_its_unit_stays_as_it_is(
    workdir, db1_dsn, db2_dsn
):
    """A rejected intent's unit is back on sale: a copy of its message may not take it."""
    with WebhookServer(decline_share=1.0) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 3)
        [declined] = event.claim(1, prefix="declined")
        message = queued_messages(event)[1]
        drain_batch(event, 1)
        assert event.states() == {"rejected": 1}
        webhook.script(decline_share=0.0)
        webhook.reset()
        send(event, [message])
        drain_batch(event, 1)
        assert webhook.per_key() == {}
    assert event.tickets() == {}
    assert event.states() == {"rejected": 1}
    [letter] = dead_letters(event)
    assert letter["state"] == "refused"
    assert f"intent {declined} was already rejected as message" in letter["last_error"]
    assert event.units() == {"available": 3}


def test_a_lost_inventory_hands_its_intents_back_instead_of_refusing_them(
    workdir, db1_dsn, db2_dsn, webhook, monkeypatch
):
    """Between a DB1 crash and the rebuild no unit can vouch for an intent: wait, don't refuse."""
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5)
    keys = event.claim(3)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # What crash recovery leaves of the UNLOGGED tables.
        conn.execute("truncate intake.allocations, intake.released_units, intake.inventory_ready")

    async def not_yet(self, pool_id):  # the rebuild has not run yet
        return None

    monkeypatch.setattr(PgStore, "rebuild_inventory", not_yet)
    settings = config.load(event.config)
    worker = Worker(settings, db1_dsn, db2_dsn, logging.getLogger("test"), once=True)
    stats = asyncio.run(worker.run())

    assert (stats.counts["read"], stats.counts["handed_back"], stats.counts["dead"]) == (3, 3, 0)
    assert event.queue_depth("intents_dlq") == 0 and event.queue_depth() == 3
    assert webhook.per_key() == {}

    # Once rebuilt (the next batch's first step), they drain as usual.
    monkeypatch.undo()
    drain_all(event, 3)
    assert event.tickets() == {key: 1 for key in keys}
    assert event.queue_depth("intents_dlq") == 0
