"""The commit RPC as operators meet it: `config set`, `up` and `drain`.

An RPC without the contract's shape is refused before anything changes
(exit 2); one whose answer does not prove the commit never sells a unit;
one payload's error or slowness (SQLSTATE 57014, a statement timeout) is that
payload's alone, and db2.commit_timeout_seconds bounds how long it can hold
its batch.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import yaml

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, draining, make_event, wait_for
from tests.conftest import intake, pool_spec, snapshot, write_config

SYSTEM_RPC = "pg_catalog.jsonb_typeof"


@pytest.fixture
def webhook():
    with WebhookServer() as server:
        yield server


def rpc(db2: str, body: str) -> None:
    """A commit RPC `public.ledger_rpc(payload jsonb)`: `body` first, then the example's commit."""
    with psycopg.connect(db2, autocommit=True) as conn:
        conn.execute(
            "create function public.ledger_rpc(payload jsonb) returns jsonb"
            f" language plpgsql as $$ begin {body} end $$"
        )


def event_with(workdir, db1, db2, url, inventory, db2_settings=None, **pool) -> Event:
    """make_event, with db2 settings of the test's own in intake.yaml."""
    spec = pool_spec("drop", inventory, validation_webhook_url=url, retry_base_seconds=0.2, **pool)
    config = write_config(workdir, db1, db2, [spec])
    data = yaml.safe_load(config.read_text())
    data["db2"].update(db2_settings or {})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    intake("up", config=config, check=True)
    return Event(config, db1, db2, "drop")


def dead_letters(event: Event) -> list[tuple]:
    with psycopg.connect(event.db1) as conn:
        return conn.execute(
            "select message ->> 'state', message ->> 'last_error',"
            " message -> 'intent' ->> 'user_id' from pgmq.q_intents_dlq order by msg_id"
        ).fetchall()


def test_a_system_function_is_refused_as_the_commit_rpc_by_config_set_and_up(
    workdir, db1_dsn, db2_dsn, empty_db_dsn
):
    event = make_event(workdir, db1_dsn, db2_dsn, "http://127.0.0.1:9/validate", 5)
    before = snapshot(db1_dsn)
    proc = intake("config", "set", "drop", f"commit_rpc_name={SYSTEM_RPC}", config=event.config)
    assert proc.returncode == 2, proc.stderr
    assert f"{SYSTEM_RPC} cannot be the commit RPC: pg_catalog is PostgreSQL's own schema" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert snapshot(db1_dsn) == before

    # The same value in intake.yaml: `up` stops before DB1 is touched.
    config = write_config(
        workdir, empty_db_dsn, db2_dsn, [pool_spec("drop", 5, commit_rpc_name=SYSTEM_RPC)]
    )
    untouched = snapshot(empty_db_dsn)
    proc = intake("up", config=config)
    assert proc.returncode == 2, proc.stderr
    assert f"{SYSTEM_RPC} cannot be the commit RPC" in proc.stderr
    assert snapshot(empty_db_dsn) == untouched


@pytest.mark.slow
def test_an_answer_without_proof_is_retried_then_dead_lettered_and_nothing_is_sold(
    workdir, db1_dsn, db2_dsn, webhook
):
    # It does commit, but answers nothing that says so: it cannot count.
    rpc(db2_dsn, "perform public.finalize_transaction(payload); return null;")
    event = event_with(
        workdir,
        db1_dsn,
        db2_dsn,
        webhook.url,
        5,
        commit_rpc_name="public.ledger_rpc",
        max_retries=1,
    )
    keys = event.claim(5)
    with draining(event):
        wait_for(lambda: event.queue_depth("intents_dlq") == 5, 60, "5 dead letters")
    letters = dead_letters(event)
    assert {state for state, _, _ in letters} == {"validated"}
    assert all("the answer does not prove the commit" in error for _, error, _ in letters)
    assert all(error.endswith("got null") for _, error, _ in letters)
    # Not sold: the units stay held, for a replay once the ledger answers.
    assert event.units() == {"locked": 5}
    assert event.states() == {"dead": 5}

    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        conn.execute(
            "create or replace function public.ledger_rpc(payload jsonb) returns jsonb"
            " language sql as 'select public.finalize_transaction(payload)'"
        )
    intake("dlq", "replay", "--all", config=event.config, check=True)
    with draining(event):
        wait_for(lambda: event.units() == {"consumed": 5}, 60, "the replay to commit")
    assert event.tickets() == {key: 1 for key in keys}
    assert event.states() == {"committed": 5}
    # Validated once; the replay went straight to the commit.
    assert webhook.per_key() == {key: 1 for key in keys}


def test_one_payload_raising_57014_does_not_sink_its_batch(workdir, db1_dsn, db2_dsn, webhook):
    rpc(
        db2_dsn,
        "if payload ->> 'user_id' = 'user-2' then"
        " raise exception 'canceling statement due to statement timeout'"
        " using errcode = 'query_canceled'; end if;"
        " return public.finalize_transaction(payload);",
    )
    event = event_with(
        workdir,
        db1_dsn,
        db2_dsn,
        webhook.url,
        5,
        commit_rpc_name="public.ledger_rpc",
        max_retries=0,
    )
    event.claim(5)
    with draining(event):
        wait_for(
            lambda: event.queue_depth() == 0 and event.queue_depth("intents_dlq") == 1,
            60,
            "the batch to finish",
        )
    with psycopg.connect(db2_dsn) as conn:
        sold = {r[0] for r in conn.execute("select user_id from public.tickets")}
    assert sold == {"user-0", "user-1", "user-3", "user-4"}
    [(state, error, user)] = dead_letters(event)
    assert (state, user) == ("validated", "user-2")
    assert error.startswith("commit RPC: 57014: canceling statement due to statement timeout")
    assert event.units() == {"consumed": 4, "locked": 1}


@pytest.mark.slow
def test_a_12_s_rpc_is_cut_off_by_the_commit_timeout_and_fails_alone(
    workdir, db1_dsn, db2_dsn, webhook
):
    rpc(
        db2_dsn,
        "if payload ->> 'user_id' = 'user-2' then perform pg_sleep(12); end if;"
        " return public.finalize_transaction(payload);",
    )
    event = event_with(
        workdir,
        db1_dsn,
        db2_dsn,
        webhook.url,
        5,
        db2_settings={"commit_timeout_seconds": 1},
        commit_rpc_name="public.ledger_rpc",
        max_retries=0,
    )
    event.claim(5)
    with draining(event):
        started = time.monotonic()
        wait_for(
            lambda: event.queue_depth() == 0 and event.queue_depth("intents_dlq") == 1,
            60,
            "the batch to finish",
            interval=0.1,
        )
        held = time.monotonic() - started
    # The batch statement's second, charged to the slow payload, which is not
    # called again: about 1 s of the 12 the RPC would take (plus the worker's
    # start), not 12 (tests/acceptance/test_commit_timeout.py measures it).
    assert held < 8, held
    assert len(event.tickets()) == 4
    [(state, error, user)] = dead_letters(event)
    assert (state, user) == ("validated", "user-2")
    assert "57014" in error and "db2.commit_timeout_seconds, 1 s" in error
    with psycopg.connect(db2_dsn) as conn:
        # Cancelled, not left running: DB2 holds no session still sleeping.
        sleeping = conn.execute(
            "select count(*) from pg_stat_activity where query like '%%ledger_rpc%%'"
            " and state = 'active' and pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert sleeping == 0


def test_commit_timeout_seconds_is_checked_like_every_setting(workdir, db1_dsn, db2_dsn):
    for bad, shown in ((0, "0"), (-1, "-1"), ("soon", '"soon"'), (4000, "4000")):
        config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("drop", 5)])
        data = yaml.safe_load(config.read_text())
        data["db2"]["commit_timeout_seconds"] = bad
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = intake("status", config=config)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert (
            "db2.commit_timeout_seconds: expected a number of seconds above 0 and at most 3600,"
            f" got {shown}"
        ) in proc.stderr
