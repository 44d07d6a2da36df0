"""`intake audit` as operators run it: real DB1 and DB2, real drains, and the
damage an asynchronous failover of DB1 leaves, made directly in the databases.

Issue 22: after such a failover the drain had committed to DB2 intents the
promoted standby never received, the rebuild handed their units out again,
and `intake status` could not see it. The audit must.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
import yaml

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, drain_all, make_event
from tests.conftest import intake, snapshot

HOSTILE = "\x1b]0;owned\x07[red]x[/]\u202eevil"
RAW = ("\x1b", "\x07", "\u202e")


def _audit(event: Event, *args: str, expect: int, config=None) -> str:
    proc = intake("audit", *args, config=config or event.config, env={"COLUMNS": "1000"})
    shown = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"audit {args} exited {proc.returncode}: {shown[-3000:]}"
    assert not [c for c in RAW if c in shown], repr(shown[-3000:])
    return proc.stdout if "--json" in args else shown


def _report(event: Event, *args: str, expect: int, config=None) -> dict:
    return json.loads(_audit(event, "--json", *args, expect=expect, config=config))


def _db(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def _with_db2(event: Event, **db2: object) -> object:
    """The event's configuration with these db2 keys changed."""
    data = yaml.safe_load(event.config.read_text())
    data["db2"].update(db2)
    path = event.config.with_name(f"{event.config.stem}-{uuid.uuid4().hex[:8]}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def webhook():
    with WebhookServer() as server:
        yield server


@pytest.mark.slow
def test_a_drained_event_agrees_and_failover_damage_is_found(workdir, db1_dsn, db2_dsn, webhook):
    event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 30, batch_size=5)
    keys = event.claim(12)
    drain_all(event, 12)

    before = snapshot(db1_dsn)
    report = _report(event, expect=0)
    assert report["agrees"] is True
    assert report["sold_query"] == "public.tickets" and report["sold_query_builtin"] is True
    (pool,) = report["pools"]
    assert pool["pool_id"] == "drop" and pool["agrees"] is True
    assert (pool["db1_intents"], pool["db1_committed"]) == (12, 12)
    assert (pool["db2_keys"], pool["db2_rows"]) == (12, 12)
    assert {f["found"] for f in pool["findings"].values()} == {0}
    text = _audit(event, expect=0)
    assert "pool drop: agrees" in text and "DB2 sold 12 keys in 12 rows" in text
    # The audit leaves DB1 exactly as it was (its temporary tables included).
    assert snapshot(db1_dsn) == before

    # The failover's damage. DB2 committed `lost`, whose archived intent the
    # promoted standby never received; the rebuild sold its unit again, and
    # that second buyer's intent was committed too: one unit, two keys.
    lost = keys[0]
    (resource, unit_no) = _db(
        db2_dsn,
        "select resource_id::text, unit_no from public.tickets where idempotency_key = %s",
        (lost,),
    )[0]
    second = str(uuid.uuid4())
    _db(
        db2_dsn,
        "insert into public.tickets (idempotency_key, pool_id, user_id, resource_id, unit_no,"
        " claimed_at) values (%s, 'drop', 'second-buyer', %s, %s, now())",
        (second, resource, unit_no),
    )
    _db(db1_dsn, "delete from pgmq.a_intents where message ->> 'idempotency_key' = %s", (lost,))

    report = _report(event, expect=1)
    assert report["agrees"] is False
    findings = report["pools"][0]["findings"]
    assert findings["sold_twice"] == {
        "found": 1,
        "examples": [{"resource_id": resource, "keys": sorted([lost, second])}],
    }
    unknown = findings["unknown_to_db1"]
    assert unknown["found"] == 2
    assert {e["idempotency_key"] for e in unknown["examples"]} == {lost, second}
    assert all(
        findings[name]["found"] == 0
        for name in findings
        if name not in ("sold_twice", "unknown_to_db1")
    )
    assert report["pools"][0]["db1_intents"] == 11
    assert report["pools"][0]["db2_rows"] == 13

    text = _audit(event, expect=1)
    assert "pool drop: DISAGREES" in text
    assert "units sold twice (one resource_id under two or more keys in DB2): 1" in text
    assert f"resource {resource}: keys {', '.join(sorted([lost, second]))}" in text
    assert "keys in DB2 that DB1 does not know (lost from DB1, e.g. an async failover): 2" in text
    assert f"key {lost} (resource {resource})" in text
    assert "disagree in 1 of 1 pools" in text
    assert _report(event, "--pool", "drop", expect=1)["pools"][0]["pool_id"] == "drop"

    # A commit DB1 counts that DB2 lost (DB2's own failover), and a ticket
    # for a key under another unit than DB1 gave it.
    gone, moved = keys[1], keys[2]
    _db(db2_dsn, "delete from public.tickets where idempotency_key = %s", (gone,))
    other = str(uuid.uuid4())
    _db(
        db2_dsn,
        "update public.tickets set resource_id = %s where idempotency_key = %s",
        (other, moved),
    )
    findings = _report(event, expect=1)["pools"][0]["findings"]
    assert [e["idempotency_key"] for e in findings["missing_from_db2"]["examples"]] == [gone]
    (mismatch,) = findings["resource_mismatch"]["examples"]
    assert mismatch["idempotency_key"] == moved and mismatch["db2_resource_id"] == other


@pytest.mark.slow
def test_a_configured_sold_query_a_view_or_a_function(workdir, db1_dsn, db2_dsn):
    # No drain: the ledger is the operator's own, filled by hand.
    event = make_event(workdir, db1_dsn, db2_dsn, "http://127.0.0.1:9/validate", 10)
    keys = event.claim(4)
    units = dict(
        _db(
            db1_dsn,
            "select idempotency_key::text, resource_id::text from intake.allocations"
            " where idempotency_key is not null",
        )
    )
    _db(
        db2_dsn,
        """
        create schema shop;
        create table shop.sales (ref text, unit uuid, event text);
        create view shop.sold as
            select ref as idempotency_key, unit as resource_id, event as pool_id from shop.sales;
        create function shop.sold_units()
            returns table (idempotency_key text, resource_id uuid, pool_id text)
            language sql stable as $$ select ref, unit, event from shop.sales $$;
        create view shop.no_pool as select ref as idempotency_key, unit as resource_id
            from shop.sales;
        """,
    )
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        for key in keys[:3]:
            # Upper-case text keys: compared as the uuids they are.
            conn.execute(
                "insert into shop.sales values (%s, %s, 'drop')", (key.upper(), units[key])
            )
        # Another event's sale in the same ledger is none of this audit's business.
        conn.execute(
            "insert into shop.sales values (%s, %s, 'other')",
            (str(uuid.uuid4()), str(uuid.uuid4())),
        )

    for name, shown in (("shop.sold", "shop.sold"), ("shop.sold_units", "shop.sold_units()")):
        config = _with_db2(event, sold_query=name)
        report = _report(event, expect=0, config=config)
        assert report["sold_query"] == shown and report["sold_query_builtin"] is False
        (pool,) = report["pools"]
        # Sold in DB2 and still queued in DB1: the drain has yet to hear so,
        # which is no discrepancy.
        assert (pool["db1_intents"], pool["db1_committed"], pool["db2_keys"]) == (4, 0, 3)

    # A hostile key in the ledger reaches the terminal escaped.
    _db(db2_dsn, "insert into shop.sales values (%s, %s, 'drop')", (HOSTILE, units[keys[0]]))
    config = _with_db2(event, sold_query="shop.sold")
    text = _audit(event, expect=1, config=config)
    assert "\\x1b]0;owned\\x07[red]x[/]\\u202eevil" in text
    assert "units sold twice (one resource_id under two or more keys in DB2): 1" in text
    assert "keys in DB2 that DB1 does not know (lost from DB1, e.g. an async failover): 1" in text

    # A sold query that does not answer the contract: exit 2, one clear line.
    for name, expected in (
        ("shop.no_pool", "must return idempotency_key, resource_id and pool_id"),
        ("shop.nothing_here", "DB2 has no view, table or function shop.nothing_here"),
    ):
        proc = intake("audit", config=_with_db2(event, sold_query=name))
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_sold_query_only_the_example_ledger_is_read(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, "http://127.0.0.1:9/validate", 5)
    assert _report(event, expect=0)["sold_query"] == "public.tickets"
    # A pool committing through another RPC sells into tables intake cannot guess.
    event.set(commit_rpc_name="shop.commit")
    proc = intake("audit", config=event.config)
    assert proc.returncode == 2
    assert "drop (shop.commit)" in proc.stderr and "set db2.sold_query" in proc.stderr
    # A DB2 without the example ledger.
    _db(db2_dsn, "drop table public.tickets")
    event.set(commit_rpc_name="public.finalize_transaction")
    proc = intake("audit", config=event.config)
    assert proc.returncode == 2 and "is not intake's example ledger" in proc.stderr


@pytest.mark.slow
def test_bad_input_and_unreachable_databases(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, "http://127.0.0.1:9/validate", 5)
    before = snapshot(db1_dsn)
    for value in (
        "public.tickets; drop table public.tickets",
        'public."tickets"',
        "Public.Tickets",
        "a.b.c",
        "",
        42,
        ["public.tickets"],
    ):
        proc = intake("audit", config=_with_db2(event, sold_query=value))
        assert proc.returncode == 2, (value, proc.stderr)
        assert "db2.sold_query" in proc.stderr and "Traceback" not in proc.stderr
    for pool, expected in (("nope", "not provisioned"), ("BAD id", "pool id")):
        proc = intake("audit", "--pool", pool, config=event.config)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr

    # A database that cannot be reached: exit 3, one line naming it.
    closed = "host=127.0.0.1 port=9 dbname=x user=x connect_timeout=2"
    for database, label in (("db1", "DB1"), ("db2", "DB2")):
        data = yaml.safe_load(event.config.read_text())
        data[database]["dsn"] = closed
        path = event.config.with_name(f"{event.config.stem}-{database}-closed.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = intake("audit", config=path)
        assert proc.returncode == 3, proc.stderr
        assert f"cannot connect to {label}" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(db1_dsn) == before
    assert intake("audit", config=event.config).returncode == 0
