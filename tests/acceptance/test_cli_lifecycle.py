"""The real `intake` CLI in subprocesses: up, claim, status, down, and bad input."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import intake, pool_spec, snapshot, write_config


def test_up_twice_changes_nothing(workdir, empty_db_dsn, db2_dsn):
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("a", 500), pool_spec("b", 20)])
    first = intake("up", "--json", config=cfg, check=True)
    report = json.loads(first.stdout)
    assert report["migrations_applied"] == [
        "0001_engine",
        "0002_drain",
        "0003_telemetry",
        "0004_crash_safety",
        "0005_row_security",
        "0006_fair_opening",
        "0007_logged_unit_sequences",
        "0008_opening_in_db1",
        "0009_webhook_governor",
        "0010_governor_pause_and_ramp",
        "0011_drain_in_place_updates",
    ]
    assert [s["added"] for s in report["seeded"]] == [500, 20]
    before = snapshot(empty_db_dsn)

    second = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert second["migrations_applied"] == [] and second["queues_created"] == []
    assert [p["action"] for p in second["pools"]] == ["unchanged", "unchanged"]
    assert [s["added"] for s in second["seeded"]] == [0, 0]
    assert snapshot(empty_db_dsn) == before


def test_up_upgrades_a_db1_left_at_an_older_schema_version(workdir, empty_db_dsn, db2_dsn):
    from intake_cli.engine import schema
    from intake_cli.platform.sqlfiles import render

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn, conn.transaction():
        # DB1 as a release that only knew migration 0001 left it.
        conn.execute(render("db1/bootstrap.sql"))
        first = schema.migrations()[0]
        conn.execute(render(first.template))
        conn.execute(
            "insert into intake.schema_version (version, name) values (%s, %s)",
            (first.version, first.name),
        )
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("old", 5)])
    report = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert report["migrations_applied"] == [
        "0002_drain",
        "0003_telemetry",
        "0004_crash_safety",
        "0005_row_security",
        "0006_fair_opening",
        "0007_logged_unit_sequences",
        "0008_opening_in_db1",
        "0009_webhook_governor",
        "0010_governor_pause_and_ramp",
        "0011_drain_in_place_updates",
    ]
    assert report["schema_version"] == schema.latest_version() == 11


def test_up_applies_an_edited_config_and_grows_inventory(workdir, empty_db_dsn, db2_dsn):
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("g", 3)])
    intake("up", config=cfg, check=True)
    for user in ("u1", "u2", "u3", "u4"):
        intake("claim", "g", user, config=cfg)
    edited = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("g", 5, batch_size=7)])
    report = json.loads(intake("up", "--json", config=edited, check=True).stdout)
    assert report["pools"] == [
        {"pool_id": "g", "action": "updated", "fields": ["inventory", "batch_size"]}
    ]
    # The sequence had passed the old end (u4 was told sold out): the new units
    # must still be reachable.
    outcomes = [
        json.loads(intake("claim", "g", u, "--json", config=edited).stdout)["outcome"]
        for u in ("u4", "u5", "u6")
    ]
    assert outcomes == ["claimed", "claimed", "sold_out"]


def test_shrinking_inventory_is_refused_and_changes_nothing(workdir, empty_db_dsn, db2_dsn):
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("s", 50)])
    intake("up", config=cfg, check=True)
    before = snapshot(empty_db_dsn)
    smaller = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("s", 10, batch_size=5)])
    proc = intake("up", config=smaller)
    assert proc.returncode == 2
    assert "inventory 10 is below the 50 units already seeded" in proc.stderr
    assert snapshot(empty_db_dsn) == before


BAD_CONFIGS = {
    "malformed yaml": ("pools: [\n  {pool_id: x", "malformed YAML"),
    "unknown key": (
        "pools:\n  - {pool_id: x, inventory: 5, validation_webhook_url: 'http://h/v', colour: 1}\n",
        "pools[0].colour: unknown key",
    ),
    "wrong type": (
        "pools:\n  - {pool_id: x, inventory: many, validation_webhook_url: 'http://h/v'}\n",
        'pools[0].inventory: expected an integer from 1 to 50000000, got "many"',
    ),
    "pool id injection": (
        'pools:\n  - pool_id: "x\'); drop table intake.allocations; --"\n'
        "    inventory: 5\n    validation_webhook_url: 'http://h/v'\n",
        "pools[0].pool_id: expected",
    ),
    "rpc injection": (
        "pools:\n  - pool_id: x\n    inventory: 5\n    validation_webhook_url: 'http://h/v'\n"
        '    commit_rpc_name: "finalize\'); drop table tickets; --"\n',
        "pools[0].commit_rpc_name: expected [schema.]function",
    ),
    "not a url": (
        "pools:\n  - {pool_id: x, inventory: 5, validation_webhook_url: 'ftp://h/v'}\n",
        "pools[0].validation_webhook_url: expected an http:// or https:// URL",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configuration_is_refused_and_changes_nothing(case, workdir, db1_dsn, db2_dsn):
    good = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("keep", 10)])
    intake("up", config=good, check=True)
    intake("claim", "keep", "someone", config=good, check=True)
    before = snapshot(db1_dsn)

    body, message = BAD_CONFIGS[case]
    bad = workdir / f"bad-{case.replace(' ', '-')}.yaml"
    bad.write_text(f"db1: {{dsn: '{db1_dsn}'}}\ndb2: {{dsn: '{db2_dsn}'}}\n{body}")
    for command in (["up"], ["status"], ["claim", "keep", "other"], ["down", "--force"]):
        proc = intake(*command, config=bad)
        assert proc.returncode == 2, (command, proc.stderr)
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    assert snapshot(db1_dsn) == before


def test_bad_config_on_an_empty_database_creates_nothing(workdir, empty_db_dsn, db2_dsn):
    before = snapshot(empty_db_dsn)
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("x", 5, commit_rpc_name="a;b")])
    assert intake("up", config=cfg).returncode == 2
    assert snapshot(empty_db_dsn) == before


def test_unknown_pool_and_bad_ids_on_claim(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("real", 10)])
    intake("up", config=cfg, check=True)
    before = snapshot(db1_dsn)
    unknown = intake("claim", "ghost", "alice", config=cfg)
    assert unknown.returncode == 2 and "pool 'ghost' is not provisioned" in unknown.stderr
    injected = intake("claim", "real'; drop table x; --", "alice", config=cfg)
    assert injected.returncode == 2 and "pool id: expected" in injected.stderr
    burst = intake("burst", "ghost", "--users", "10", config=cfg)
    assert burst.returncode == 2
    assert snapshot(db1_dsn) == before
    control = intake("claim", "real", "x" * 300, "--json", config=cfg)
    assert control.returncode == 1
    assert json.loads(control.stdout)["outcome"] == "invalid_user"


def test_unreachable_dsn_is_a_clear_error(workdir, db2_dsn):
    cfg = write_config(
        workdir, "host=127.0.0.1 port=1 user=intake dbname=intake", db2_dsn, [pool_spec()]
    )
    for command in ("up", "status"):
        proc = intake(command, config=cfg)
        assert proc.returncode == 3
        assert "cannot connect to DB1 (" in proc.stderr
        assert "port=1): connection to server" in proc.stderr
        assert "Connection refused" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_down_refuses_with_queued_intents_then_exports_or_forces(workdir, empty_db_dsn, db2_dsn):
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("d", 10)])
    intake("up", config=cfg, check=True)
    for user in ("a", "b", "c"):
        intake("claim", "d", user, config=cfg, check=True)
    before = snapshot(empty_db_dsn)

    refused = intake("down", config=cfg)
    assert refused.returncode == 6
    assert "3 intents are still queued and 0 are dead-lettered" in refused.stderr
    assert snapshot(empty_db_dsn) == before

    export = workdir / "export.jsonl"
    done = intake("down", "--export", str(export), config=cfg, check=True)
    assert "exported 3 intents" in done.stdout
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(rec["message"]["user_id"] for rec in lines) == ["a", "b", "c"]
    assert {rec["queue"] for rec in lines} == {"intents"}
    with psycopg.connect(empty_db_dsn) as conn:
        left = conn.execute(
            "select count(*) from pg_namespace where nspname = 'intake'"
        ).fetchone()[0]
        queues = conn.execute("select count(*) from pgmq.meta").fetchone()[0]
    assert (left, queues) == (0, 0)

    # Up again, claim, and discard knowingly.
    intake("up", config=cfg, check=True)
    intake("claim", "d", "z", config=cfg, check=True)
    forced = intake("down", "--force", config=cfg, check=True)
    assert "discarded 1 queued" in forced.stdout
