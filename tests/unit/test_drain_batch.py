"""One batch's decisions (engine/drain/batch.py) against the in-memory store: no database.

Each test sets a scene in DB1's terms (pools, claimed units, queued
messages), runs batches with a scripted webhook and a fake clock, and reads
the outcome where an operator would: the ledger, the units, the queue, the
archive, the dead-letter queue, intent_state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from intake_cli.engine import fence
from intake_cli.engine.drain.batch import (
    FENCED_DELAY_S,
    FOREIGN_POOL_DELAY_S,
    LOST_INVENTORY_DELAY_S,
    PAUSED_POOL_DELAY_S,
    REBUILD_RETRY_FIRST_S,
    one_batch,
)
from intake_cli.engine.drain.context import DrainContext
from intake_cli.engine.drain.intents import RawJson, Refusal
from intake_cli.engine.drain.phases import PhaseClock
from intake_cli.engine.drain.store import GovernorReport, WebhookGrant
from intake_cli.platform.config import PoolSettings
from intake_cli.platform.errors import LedgerContractError, LedgerUnavailable
from tests.unit.drain_memory_store import (
    FakeClock,
    FakeWebhook,
    MemoryStore,
    RebuildFails,
    State,
    Unit,
    context,
    settings,
)


def scene(
    units: int = 10, store_class: type[MemoryStore] = MemoryStore, **pool: Any
) -> tuple[MemoryStore, FakeWebhook, DrainContext]:
    store = store_class(FakeClock())
    store.add_pool("drop", units, **pool)
    webhook = FakeWebhook()
    return store, webhook, context(store, webhook, rng=random.Random(7))


def drain(ctx: DrainContext, pool_filter: str | None = None) -> Counter[str]:
    """One batch, as `intake drain --once` runs it; its counts."""
    counts: Counter[str] = Counter()
    clock = ctx.store.clock  # type: ignore[attr-defined]
    asyncio.run(clock.run(one_batch(ctx, counts, pool_filter)))
    return counts


def later(store: MemoryStore, seconds: float) -> None:
    store.clock.advance(seconds)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


# -- the webhook says yes --------------------------------------------------------


def test_a_yes_commits_once_consumes_the_unit_and_archives_the_message():
    store, webhook, ctx = scene()
    key = store.claim("ann")
    counts = drain(ctx)
    assert store.ledger.keys() == {key}
    assert store.unit_of(key).status == "consumed"
    assert store.queue == {} and list(store.archive) == [1]
    assert store.states[key].state == "committed"
    assert (counts["read"], counts["validated"], counts["committed"]) == (1, 1, 1)
    assert webhook.keys() == [key]


def test_the_yes_is_recorded_before_the_commit():
    """A worker dying between them must not make the next one ask the webhook again."""
    store, _, ctx = scene()
    store.claim("ann")
    drain(ctx)
    order = [op for op, _ in store.calls if op in ("record_answers", "commit", "finish")]
    assert order == ["record_answers", "commit", "finish"]


def test_the_webhook_gets_the_intent_with_its_state_attempt_url_and_secret():
    pool = PoolSettings("drop", 10, "http://ignored.test", webhook_secret="whsec_c2VjcmV0")
    store, webhook, _ = scene()
    ctx = context(store, webhook, config=settings(pool))
    key = store.claim("ann")
    drain(ctx)
    [call] = webhook.calls
    assert call["url"] == "http://webhook.test/drop"  # DB1's live setting, not the file's
    assert call["secret"] == "whsec_c2VjcmV0"
    assert (call["payload"]["state"], call["payload"]["attempt"]) == ("queued", 1)
    assert call["payload"]["idempotency_key"] == key


def test_the_commit_rpc_gets_the_payload_as_validated_within_the_commit_timeout():
    store, webhook, _ = scene()
    ctx = context(store, webhook, config=settings(commit_timeout_s=2.5))
    seen: list[Any] = []
    commit = store.commit

    async def watching(rpc, payloads, timeout_s):
        seen.append((str(rpc), [p["state"] for p in payloads], timeout_s))
        return await commit(rpc, payloads, timeout_s)

    store.commit = watching  # type: ignore[method-assign]
    store.claim("ann")
    drain(ctx)
    assert seen == [("public.finalize_transaction", ["validated"], 2.5)]


def test_a_whole_batch_takes_one_read_one_check_one_commit_and_one_finish():
    store, _, ctx = scene(units=50)
    for n in range(50):
        store.claim(f"buyer-{n}")
    counts = drain(ctx)
    assert counts["committed"] == 50
    for op in ("read", "unit_checks", "commit", "finish"):
        assert len(store.ops(op)) == 1, op


def test_answers_arriving_together_share_a_write():
    store, webhook, ctx = scene(units=20)
    for n in range(20):
        store.claim(f"buyer-{n}")
    webhook.gate = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(one_batch(ctx, Counter()))
        while len(webhook.calls) < 20:
            await asyncio.sleep(0)
        webhook.gate.set()
        await task

    asyncio.run(run())
    writes = store.ops("record_answers")
    assert sum(len(yes) for yes, _ in writes) == 20
    assert len(writes) <= 2


# -- the webhook says no ---------------------------------------------------------


@pytest.mark.parametrize("status", [400, 402, 409, 422])
def test_a_definite_no_releases_the_unit_and_archives_the_message(status):
    store, webhook, ctx = scene()
    key = store.claim("ann")
    webhook.default = status
    counts = drain(ctx)
    assert store.units[("drop", 1)] == Unit()  # back on sale
    assert store.states[key].state == "rejected"
    assert store.states[key].last_error == f"HTTP {status}"
    assert store.ledger == {} and store.queue == {} and list(store.archive) == [1]
    assert (counts["rejected"], counts["committed"], counts["retried"]) == (1, 0, 0)


def test_a_yes_and_a_no_arriving_together_share_one_write():
    store, webhook, ctx = scene()
    first, yes, no = store.claim("ann"), store.claim("bob"), store.claim("cy")
    webhook.script[no] = [422]
    webhook.gate = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(one_batch(ctx, Counter()))
        while len(webhook.calls) < 3:
            await asyncio.sleep(0)
        webhook.gate.set()
        await task

    asyncio.run(run())
    # The first answer is written alone; the two that came during its write, together.
    assert store.ops("record_answers") == [([first], []), ([yes], [no])]
    assert store.ledger.keys() == {first, yes}


# -- "not now": retried with backoff ----------------------------------------------


@pytest.mark.parametrize("answer", [500, 502, 503, 401, 403, 404, "timeout", "refused"])
def test_anything_but_a_definite_answer_is_retried_later(answer):
    store, webhook, ctx = scene()
    key = store.claim("ann")
    webhook.default = answer
    counts = drain(ctx)
    assert counts["retried"] == 1 and counts["committed"] == 0
    state = store.states[key]
    assert (state.state, state.attempts) == ("queued", 1)
    assert state.last_error.startswith("webhook: ")
    message = store.message_of(key)
    assert message is not None and message.vt > store.clock.now  # hidden for its backoff
    assert store.unit_of(key).status == "locked" and store.ledger == {}


def test_a_retry_asks_again_with_the_same_key_once_the_backoff_has_passed():
    store, webhook, ctx = scene()
    key = store.claim("ann")
    webhook.script[key] = [503, 200]
    drain(ctx)
    assert drain(ctx)["read"] == 0  # still hidden
    later(store, 60)
    counts = drain(ctx)
    assert counts["committed"] == 1
    assert webhook.keys() == [key, key]
    assert [c["payload"]["attempt"] for c in webhook.calls] == [1, 2]
    assert store.ledger.keys() == {key}


def test_backoff_grows_with_each_failure_and_has_jitter():
    store, webhook, ctx = scene(retry_base_seconds=2.0, retry_max_seconds=1000.0, max_retries=10)
    key = store.claim("ann")
    webhook.default = 503
    delays = []
    for _ in range(5):
        drain(ctx)
        [(_, delay)] = store.ops("finish")[-1]["retries"]
        delays.append(delay)
        later(store, delay)
    # Equal jitter: between half the step and the step, the step doubling from 2 s.
    for attempt, delay in enumerate(delays, start=1):
        step = 2.0 * 2 ** (attempt - 1)
        assert step / 2 <= delay <= step + 1
    assert store.states[key].attempts == 5


def test_backoff_is_capped():
    store, webhook, ctx = scene(retry_base_seconds=1.0, retry_max_seconds=4.0, max_retries=10)
    store.claim("ann")
    webhook.default = 503
    for _ in range(6):
        drain(ctx)
        [(_, delay)] = store.ops("finish")[-1]["retries"]
        assert delay <= 4
        later(store, delay)


# -- max_retries and the dead-letter queue ------------------------------------------


def test_past_max_retries_the_intent_goes_to_the_dlq_with_its_last_error():
    store, webhook, ctx = scene(max_retries=2)
    key = store.claim("ann")
    webhook.default = 503
    for _ in range(3):
        counts = drain(ctx)
        later(store, 120)
    assert counts["dead"] == 1
    [letter] = store.dead_letters
    assert (letter["state"], letter["attempts"]) == ("queued", 3)
    assert letter["last_error"] == "webhook: HTTP 503"
    assert letter["intent"]["idempotency_key"] == key
    assert store.states[key].state == "dead"
    assert store.queue == {} and store.unit_of(key).status == "locked"
    assert webhook.keys() == [key] * 3


def test_max_retries_zero_dead_letters_at_the_first_failure():
    store, webhook, ctx = scene(max_retries=0)
    store.claim("ann")
    webhook.default = "timeout"
    counts = drain(ctx)
    assert (counts["dead"], counts["retried"]) == (1, 0)
    assert store.dead_letters[0]["last_error"] == "webhook: timeout after 10 s"


def test_a_dead_letter_keeps_the_validated_state_a_replay_resumes_from():
    store, _, ctx = scene(max_retries=1)
    key = store.claim("ann")
    store.commit_refusals[key] = "the answer does not prove the commit: got null"
    drain(ctx)
    later(store, 120)
    drain(ctx)
    [letter] = store.dead_letters
    assert (letter["state"], letter["attempts"]) == ("validated", 2)
    assert letter["last_error"] == "commit RPC: the answer does not prove the commit: got null"


# -- DB2 down or refusing: only the commit is retried -----------------------------


@pytest.mark.parametrize(
    "error",
    [
        LedgerUnavailable("DB2: connection lost"),
        PoolTimeout("couldn't get a connection after 5.00 sec"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
    ],
)
def test_db2_unavailable_keeps_the_intent_validated_and_retries_only_the_commit(error):
    """DB2 out of reach is not a failure of the payment: no attempt is charged."""
    store, webhook, ctx = scene(max_retries=0)
    key = store.claim("ann")
    store.fail("commit", error)
    counts = drain(ctx)
    assert (counts["validated"], counts["retried"], counts["deferred"]) == (1, 0, 1)
    assert counts["committed"] == 0 and store.dead_letters == []
    state = store.states[key]
    assert (state.state, state.attempts) == ("validated", 0)
    message = store.message_of(key)
    assert message is not None and message.vt == store.clock.now + 2
    later(store, 2)
    assert drain(ctx)["committed"] == 1
    assert webhook.keys() == [key]  # asked once, committed once
    assert store.ledger.keys() == {key}


def test_a_payload_the_rpc_does_not_prove_fails_alone():
    store, _, ctx = scene()
    good, bad = store.claim("ann"), store.claim("bob")
    store.commit_refusals[bad] = "the answer does not prove the commit: got null"
    counts = drain(ctx)
    assert (counts["committed"], counts["retried"]) == (1, 1)
    assert store.ledger.keys() == {good}
    assert (
        store.states[bad].last_error == "commit RPC: the answer does not prove the commit: got null"
    )
    assert store.states[bad].state == "validated"


def test_a_commit_rpc_db2_lacks_fails_the_intents_not_the_worker():
    store, _, ctx = scene()
    key = store.claim("ann")
    store.fail("resolve_rpc", LedgerContractError("DB2 has no function public.gone(jsonb)"))
    counts = drain(ctx)
    assert counts["retried"] == 1 and "commit" not in dict(store.calls)
    assert store.states[key].last_error == "DB2 has no function public.gone(jsonb)"


def test_a_validated_intent_skips_the_webhook():
    store, webhook, ctx = scene()
    key = store.claim("ann")
    store.states[key] = State("validated", msg_id=1, attempts=2)
    counts = drain(ctx)
    assert webhook.calls == [] and counts["committed"] == 1
    assert store.ledger.keys() == {key}


def test_a_committed_intent_read_again_is_committed_again_idempotently_and_archived():
    """A crash between DB2's commit and DB1's archive."""
    store, webhook, ctx = scene()
    key = store.claim("ann")
    store.states[key] = State("committed", msg_id=1)
    store.ledger[key] = {"idempotency_key": key}
    counts = drain(ctx)
    assert webhook.calls == [] and counts["committed"] == 1
    assert store.rpc_calls == [key] and len(store.ledger) == 1
    assert store.queue == {}


@pytest.mark.parametrize("state", ["rejected", "dead"])
def test_a_finished_intent_read_again_as_the_same_message_is_only_archived(state):
    store, webhook, ctx = scene()
    key = store.claim("ann")
    store.states[key] = State(state, msg_id=1)
    drain(ctx)
    assert webhook.calls == [] and store.rpc_calls == []
    assert store.ops("finish")[0]["archived"] == [key]
    assert store.queue == {} and store.dead_letters == []


# -- refusals: messages that are not live intents ---------------------------------


def refused(store: MemoryStore) -> list[str]:
    return [letter["last_error"] for letter in store.dead_letters if letter["state"] == "refused"]


def test_a_message_that_is_not_json_is_refused_as_it_came():
    store, webhook, ctx = scene()
    store.send('{"idempotency_key": ')
    counts = drain(ctx)
    [reason] = refused(store)
    assert reason.startswith("malformed intent message: ")
    assert store.dead_letters[0]["intent"] == RawJson('{"idempotency_key": ')
    assert (counts["refused"], counts["dead"]) == (1, 1)
    assert store.queue == {} and store.archive == {} and webhook.calls == []


def test_a_json_value_that_is_not_an_object_is_refused():
    store, _, ctx = scene()
    store.send("[1, 2]")
    drain(ctx)
    assert refused(store) == ["malformed intent message: not a JSON object"]


def test_an_object_missing_an_intents_fields_is_refused_with_every_problem():
    store, _, ctx = scene()
    store.send({"pool_id": "drop", "unit_no": 0})
    drain(ctx)
    [reason] = refused(store)
    for problem in (
        "idempotency_key is not a UUID",
        "resource_id is not a UUID",
        "user_id is not a non-empty string",
        "unit_no is not a unit number",
    ):
        assert problem in reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"idempotency_key": "00000000-0000-4000-8000-000000000001"}, "another idempotency key"),
        ({"user_id": "mallory"}, "held by another buyer"),
        ({"resource_id": "00000000-0000-4000-8000-000000000002"}, "has another resource_id"),
        ({"unit_no": 99}, "unit 99 of pool drop does not exist"),
        ({"unit_no": 5}, "unit 5 of pool drop is not claimed (available)"),
    ],
)
def test_a_message_the_claim_path_did_not_issue_is_refused_untouched(changes, reason):
    store, webhook, ctx = scene()
    key = store.claim("ann")
    store.queue.clear()
    # A copy of the claimed intent with some fields changed, written by someone else.
    store.send(_message(key, store) | changes)
    counts = drain(ctx)
    [why] = refused(store)
    assert why.startswith("not issued by DB1's claim path: ") and reason in why
    assert counts["refused"] == 1 and webhook.calls == [] and store.rpc_calls == []
    assert store.unit_of(key).status == "locked"  # the real intent's unit is left alone
    assert key not in store.states


def _message(key: str, store: MemoryStore) -> dict[str, Any]:
    unit_no, unit = next((n, u) for (_, n), u in store.units.items() if u.key == key)
    return {
        "idempotency_key": key,
        "pool_id": "drop",
        "user_id": unit.user,
        "resource_id": unit.resource,
        "unit_no": unit_no,
        "claimed_at": "2026-01-01T00:00:00+00:00",
    }


def test_a_copy_of_a_finished_intent_is_refused_and_leaves_its_state_alone():
    store, webhook, ctx = scene()
    key = store.claim("ann")
    copy = _message(key, store)
    webhook.default = 422
    drain(ctx)
    store.send(copy)
    drain(ctx)
    [why] = refused(store)
    assert f"intent {key} was already rejected as message 1" in why
    assert store.states[key].state == "rejected" and len(webhook.calls) == 1


def test_an_intent_of_a_pool_db1_does_not_know_is_refused():
    store, _, ctx = scene()
    key = store.claim("ann")
    store.queue.clear()
    store.send(_message(key, store) | {"pool_id": "elsewhere"})
    drain(ctx)
    assert refused(store) == ["pool 'elsewhere' is not provisioned in DB1"]


def test_refusals_travel_as_a_named_type():
    store, _, ctx = scene()
    seen: list[Refusal] = []
    refuse = store.refuse

    async def watching(refusals):
        seen.extend(refusals)
        await refuse(refusals)

    store.refuse = watching  # type: ignore[method-assign]
    store.send("[]")
    drain(ctx)
    [refusal] = seen
    assert (refusal.msg_id, refusal.pool_id) == (1, None)
    assert refusal.reason == "malformed intent message: not a JSON object"


def test_a_batch_with_refusals_still_commits_the_genuine_intents():
    store, _, ctx = scene()
    key = store.claim("ann")
    store.send("not json")
    counts = drain(ctx)
    assert (counts["committed"], counts["refused"], counts["read"]) == (1, 1, 2)
    assert store.ledger.keys() == {key}


# -- handed back, not charged an attempt -------------------------------------------


def test_a_paused_pools_intents_are_handed_back():
    store, webhook, ctx = scene(paused=True)
    key = store.claim("ann")
    counts = drain(ctx)
    assert counts["handed_back"] == 1 and webhook.calls == []
    assert store.ops("hand_back") == [([1], PAUSED_POOL_DELAY_S)]
    assert key not in store.states


def test_a_worker_serving_one_pool_hands_the_others_back():
    store, _, ctx = scene()
    store.add_pool("other", 5)
    store.claim("ann", pool_id="other")
    mine = store.claim("bob")
    counts = drain(ctx, pool_filter="drop")
    assert counts["handed_back"] == 1 and store.ledger.keys() == {mine}
    assert store.ops("hand_back") == [([1], FOREIGN_POOL_DELAY_S)]


def test_a_lost_inventory_is_rebuilt_before_the_batch_is_checked():
    store, _, ctx = scene()
    key = store.claim("ann")
    store.lost.add("drop")
    counts = drain(ctx)
    assert store.ops("rebuild_inventory") == ["drop"]
    assert counts["committed"] == 1 and store.ledger.keys() == {key}


def test_until_the_rebuild_succeeds_intents_are_handed_back_not_refused(caplog):
    store, webhook, ctx = scene(store_class=RebuildFails)
    store.claim("ann")
    store.lost.add("drop")
    with caplog.at_level(logging.ERROR):
        counts = drain(ctx)
    assert counts["handed_back"] == 1 and counts["refused"] == 0 and webhook.calls == []
    assert store.ops("hand_back") == [([1], LOST_INVENTORY_DELAY_S)]
    [failed] = events(caplog, "inventory_rebuild_failed")
    assert failed["retry_in_s"] == REBUILD_RETRY_FIRST_S


def test_a_failed_rebuild_is_tried_again_after_a_growing_pause():
    store, _, ctx = scene(store_class=RebuildFails)
    store.lost.add("drop")
    drain(ctx)
    drain(ctx)  # within the pause: not tried
    assert len(store.ops("rebuild_inventory")) == 1
    later(store, REBUILD_RETRY_FIRST_S)
    drain(ctx)
    assert len(store.ops("rebuild_inventory")) == 2
    later(store, REBUILD_RETRY_FIRST_S)  # the pause doubled
    drain(ctx)
    assert len(store.ops("rebuild_inventory")) == 2


def test_a_held_replication_fence_hands_the_batch_back_without_an_attempt(caplog):
    store, webhook, ctx = scene()
    key = store.claim("ann")
    store.fence_crossing = fence.Crossing(False, 10.0, 0)
    with caplog.at_level(logging.WARNING):
        counts = drain(ctx)
    assert counts["fenced"] == 1 and counts["retried"] == 0 and store.rpc_calls == []
    assert store.ops("hand_back")[-1] == ([1], FENCED_DELAY_S)
    assert store.states[key].state == "validated"  # the answer is kept
    assert events(caplog, "replication_fence_held")[0]["intents"] == 1
    store.fence_crossing = fence.Crossing(True, 0.0, 0)
    later(store, FENCED_DELAY_S)
    assert drain(ctx)["committed"] == 1 and len(webhook.calls) == 1


def test_the_fence_waits_a_third_of_the_lease_in_the_configured_mode():
    store, webhook, _ = scene(visibility_timeout=30)
    ctx = context(store, webhook, config=settings(fence_mode="synchronous"))
    store.claim("ann")
    drain(ctx)
    assert store.ops("cross_fence") == [("synchronous", 10.0)]


def test_a_fence_blind_to_standbys_is_said_once(caplog):
    store, _, ctx = scene()
    store.fence_crossing = fence.Crossing(True, 0.0, 2)
    with caplog.at_level(logging.WARNING):
        for user in ("ann", "bob"):
            store.claim(user)
            drain(ctx)
    [said] = events(caplog, "replication_fence_blind")
    assert said["standbys"] == 2


# -- the fleet-wide commit rate -------------------------------------------------------


def test_commits_wait_for_the_rate_limits_tokens_in_chunks():
    store, _, ctx = scene(commit_rate_per_sec=10)
    keys = [store.claim(f"buyer-{n}") for n in range(5)]
    store.token_grants = [2, 0, 0, 3]
    started = store.clock.now
    counts = drain(ctx)
    assert counts["committed"] == 5
    assert [len(chunk) for chunk in store.ops("commit")] == [2, 3]
    assert store.ops("take_commit_tokens") == [5, 3, 3, 3]
    assert store.clock.now - started >= 2 * 0.1  # two waits of 1/rate
    assert store.ledger.keys() == set(keys)


def test_without_a_rate_limit_no_token_is_asked_for():
    store, _, ctx = scene(commit_rate_per_sec=0)
    store.claim("ann")
    drain(ctx)
    assert store.ops("take_commit_tokens") == []


# -- leases and shutdown ---------------------------------------------------------------


def slow_batch(store: MemoryStore, webhook: FakeWebhook, ctx: DrainContext, steps):
    """Run one batch with the webhook held; `steps(task)` runs while it waits."""
    webhook.gate = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(one_batch(ctx, Counter()))
        while not webhook.calls:
            await asyncio.sleep(0)
        await steps(task)

    asyncio.run(run())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_slow_webhook_has_its_leases_renewed_three_times_a_timeout():
    store, webhook, ctx = scene(visibility_timeout=30)
    store.claim("ann")

    async def steps(task):
        for _ in range(3):
            store.clock.advance(10)
            await settle()
        webhook.gate.set()
        await task

    slow_batch(store, webhook, ctx, steps)
    assert store.ops("hand_back") == [([1], 30)] * 3
    assert store.ledger


def test_a_failed_renewal_is_tried_again_at_the_next_tick(caplog):
    store, webhook, ctx = scene(visibility_timeout=3)
    store.claim("ann")
    store.fail("hand_back", psycopg.OperationalError("DB1 blinked"))

    async def steps(task):
        for _ in range(2):
            store.clock.advance(1)
            await settle()
        webhook.gate.set()
        await task

    with caplog.at_level(logging.WARNING):
        slow_batch(store, webhook, ctx, steps)
    assert len(store.ops("hand_back")) == 2
    assert events(caplog, "lease_not_extended")[0]["error"] == "DB1 blinked"


def test_a_batch_cancelled_at_shutdown_hands_back_what_it_has_not_finished():
    store, webhook, ctx = scene()
    store.claim("ann")
    store.claim("bob")

    async def steps(task):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    slow_batch(store, webhook, ctx, steps)
    assert store.ops("hand_back") == [([1, 2], 0)]
    assert all(m.vt <= store.clock.now for m in store.queue.values())
    assert store.ledger == {} and store.states == {}


def test_a_failed_write_of_the_answers_fails_the_batch_after_every_call_returned():
    store, webhook, ctx = scene()
    for user in ("ann", "bob", "cy"):
        store.claim(user)
    store.fail("record_answers", psycopg.OperationalError("DB1 went away"))
    with pytest.raises(psycopg.OperationalError):
        drain(ctx)
    assert len(webhook.calls) == 3
    assert store.rpc_calls == [] and store.ops("finish") == []


# -- the read ---------------------------------------------------------------------------


def test_an_empty_queue_reads_nothing_and_counts_no_batch():
    _, _, ctx = scene()
    assert drain(ctx) == Counter()


def test_a_worker_for_an_unknown_pool_does_not_read():
    store, _, ctx = scene()
    store.claim("ann")
    assert drain(ctx, pool_filter="elsewhere") == Counter()
    assert store.ops("read") == []


def test_the_read_takes_the_largest_batch_and_lease_of_the_pools_served():
    store, _, ctx = scene(batch_size=5, visibility_timeout=20)
    store.add_pool("big", 1, batch_size=50, visibility_timeout=90)
    drain(ctx)
    drain(ctx, pool_filter="drop")
    assert store.ops("read") == [(90, 50), (20, 5)]


def test_a_batch_reads_at_most_batch_size_messages():
    store, _, ctx = scene(units=10, batch_size=4)
    for n in range(10):
        store.claim(f"buyer-{n}")
    assert drain(ctx)["read"] == 4
    assert len(store.queue) == 6


# -- what the batch reports ---------------------------------------------------------------


def test_phases_are_timed_only_by_the_clock_the_context_carries():
    store, webhook, _ = scene()
    phases = PhaseClock()
    ctx = context(store, webhook, phases=phases)
    store.claim("ann")
    drain(ctx)
    assert set(phases.count) >= {
        "read",
        "validate",
        "db1_mark",
        "fence",
        "commit",
        "db2_commit",
        "finish",
    }


def test_one_log_line_per_batch_and_per_transition(caplog):
    store, webhook, ctx = scene()
    yes, no = store.claim("ann"), store.claim("bob")
    webhook.script[no] = [409]
    with caplog.at_level(logging.INFO):
        drain(ctx)
    [batch] = events(caplog, "batch")
    assert (batch["size"], batch["committed"], batch["rejected"]) == (2, 1, 1)
    moves = {(t["idempotency_key"], t["to_state"]) for t in events(caplog, "transition")}
    assert moves == {(yes, "validated"), (yes, "committed"), (no, "rejected")}
    assert all(t["msg_id"] and t["pool_id"] == "drop" for t in events(caplog, "transition"))


def test_the_memory_store_reads_messages_as_db1s_json_text():
    store, _, _ = scene()
    store.claim("ann")
    [row] = asyncio.run(store.read(30, 10))
    assert isinstance(row["message"], str) and json.loads(row["message"])["user_id"] == "ann"


# -- the payment provider meters its callers (issue 26) -----------------------------


def test_a_429_is_not_charged_and_is_asked_again_after_its_retry_after():
    store, webhook, ctx = scene(max_retries=0)
    key = store.claim("ann")
    webhook.script[key] = ["429 retry-after 3", 200]
    counts = drain(ctx)
    assert (counts["retried"], counts["deferred"], counts["committed"]) == (0, 1, 0)
    assert key not in store.states and store.dead_letters == []
    assert store.message_of(key).vt == store.clock.now + 3
    # The governor heard it: one call, throttled, and how long the provider asked for.
    assert store.ops("report_webhook_calls") == [("drop", 0, 1, 0, 3.0)]
    later(store, 3)
    assert drain(ctx)["committed"] == 1


def test_a_429_without_retry_after_waits_a_second_and_reports_the_throttle():
    store, webhook, ctx = scene()
    keys = [store.claim(u) for u in ("ann", "bob", "cy")]
    webhook.script[keys[1]] = [429, 200]
    counts = drain(ctx)
    assert (counts["committed"], counts["deferred"], counts["retried"]) == (2, 1, 0)
    assert store.message_of(keys[1]).vt == store.clock.now + 1
    assert store.ops("report_webhook_calls") == [("drop", 2, 1, 0, None)]


def test_an_ungoverned_webhook_costs_no_statement():
    store, _, ctx = scene()
    store.claim("ann")
    assert drain(ctx)["committed"] == 1
    assert store.ops("take_webhook_calls") == [] and store.ops("report_webhook_calls") == []


def test_a_governed_webhook_is_called_only_as_fast_as_its_grants():
    store, webhook, ctx = scene(webhook_governed=True)
    keys = [store.claim(f"u{n}") for n in range(5)]
    store.webhook_grants = [WebhookGrant(2, 0.0, False), WebhookGrant(0, 0.5, False)]
    counts = drain(ctx)
    assert counts["committed"] == 5
    # 2 granted; none for half a second (waited, not handed back); then the rest.
    assert store.ops("take_webhook_calls") == [("drop", 5), ("drop", 3), ("drop", 3)]
    assert webhook.keys()[:2] == keys[:2] and sorted(webhook.keys()) == sorted(keys)
    assert [r[1:] for r in store.ops("report_webhook_calls")] == [(2, 0, 0, None), (3, 0, 0, None)]


def test_a_long_pause_hands_the_batch_back_uncharged():
    store, webhook, ctx = scene(webhook_governed=True, max_retries=0)
    keys = [store.claim(u) for u in ("ann", "bob")]
    store.webhook_grants = [WebhookGrant(0, 29.2, False)]
    counts = drain(ctx)
    assert webhook.calls == [] and counts["deferred"] == 2 and counts["retried"] == 0
    assert {store.message_of(k).vt for k in keys} == {store.clock.now + 30}


def test_while_the_breaker_is_open_only_the_probe_is_called_and_nothing_is_charged():
    store, webhook, ctx = scene(webhook_governed=True, max_retries=0)
    keys = [store.claim(u) for u in ("ann", "bob", "cy")]
    webhook.default = "refused"
    store.webhook_grants = [WebhookGrant(1, 0.0, True), WebhookGrant(0, 2.5, False)]
    counts = drain(ctx)
    # One probe call; the provider is still down: the probe is handed back
    # like the others, never charged, never dead-lettered.
    assert len(webhook.calls) == 1
    assert (counts["retried"], counts["deferred"], counts["dead"]) == (0, 3, 0)
    assert store.states == {} and store.dead_letters == []
    assert all(store.message_of(k) is not None for k in keys)


def test_failures_before_the_breaker_opens_are_charged_and_reported(caplog):
    store, webhook, ctx = scene()
    keys = [store.claim(f"u{n}") for n in range(5)]
    webhook.default = 503
    store.governor_answers = [GovernorReport("open", True, None, None)]
    with caplog.at_level(logging.ERROR, logger=ctx.log.name):
        counts = drain(ctx)
    assert counts["retried"] == 5
    assert store.ops("report_webhook_calls") == [("drop", 0, 0, 5, None)]
    assert [e["pool_id"] for e in events(caplog, "webhook_breaker_opened")] == ["drop"]
    assert {store.states[k].attempts for k in keys} == {1}


def test_a_decline_is_still_a_decision_under_a_governor():
    store, webhook, ctx = scene(webhook_governed=True)
    yes, no = store.claim("ann"), store.claim("bob")
    webhook.script[no] = [402]
    counts = drain(ctx)
    assert (counts["committed"], counts["rejected"], counts["deferred"]) == (1, 1, 0)
    assert store.ledger.keys() == {yes} and store.states[no].state == "rejected"
    assert [r[1:] for r in store.ops("report_webhook_calls")] == [(2, 0, 0, None)]


def test_failures_while_the_provider_answers_nobody_are_its_outage_not_charged():
    store, webhook, ctx = scene(max_retries=0)
    keys = [store.claim(f"u{n}") for n in range(4)]
    webhook.default = "timeout"
    store.governor_answers = [GovernorReport("closed", False, None, None, answering=False)]
    counts = drain(ctx)
    assert (counts["retried"], counts["dead"], counts["deferred"]) == (0, 0, 4)
    assert store.states == {} and store.dead_letters == []
    assert {store.message_of(k).vt for k in keys} == {store.clock.now + 2}
