"""Live controls through the CLI: pause/resume and config set, validated, nothing else changed."""

from __future__ import annotations

import json

import psycopg

from tests.conftest import intake, pool_spec, snapshot, write_config


def settings_of(dsn: str, pool_id: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select to_jsonb(c) from intake.engine_config c where pool_id = %s", (pool_id,)
        ).fetchone()[0]


def claim_outcome(cfg, pool_id: str, user: str) -> str:
    return json.loads(intake("claim", pool_id, user, "--json", config=cfg).stdout)["outcome"]


def test_pause_then_resume(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10)])
    intake("up", config=cfg, check=True)
    assert "pool live: paused" in intake("pool", "pause", "live", config=cfg, check=True).stdout
    assert claim_outcome(cfg, "live", "ann") == "paused"
    intake("pool", "resume", "live", config=cfg, check=True)
    assert claim_outcome(cfg, "live", "ann") == "claimed"
    unknown = intake("pool", "pause", "ghost", config=cfg)
    assert unknown.returncode == 2 and "pool 'ghost' is not provisioned" in unknown.stderr


def test_config_set_changes_only_what_it_names(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10)])
    intake("up", config=cfg, check=True)
    before = settings_of(db1_dsn, "live")
    proc = intake(
        "config",
        "set",
        "live",
        "batch_size=7",
        "commit_rate_per_sec=50",
        "validation_webhook_url=https://pay.example/v2",
        "--json",
        config=cfg,
        check=True,
    )
    assert json.loads(proc.stdout) == {
        "batch_size": {"old": 100, "new": 7},
        "commit_rate_per_sec": {"old": 0, "new": 50},
        "validation_webhook_url": {
            "old": "http://127.0.0.1:9/validate",
            "new": "https://pay.example/v2",
        },
    }
    after = settings_of(db1_dsn, "live")
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"batch_size", "commit_rate_per_sec", "validation_webhook_url", "updated_at"}


def test_bad_live_settings_are_refused_and_change_nothing(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10)])
    intake("up", config=cfg, check=True)
    before = snapshot(db1_dsn)
    cases = {
        ("batch_size=ten",): 'batch_size: expected an integer from 1 to 10000, got "ten"',
        ("batch_size=5", "inventory=3"): "inventory: not a live setting",
        ("validation_webhook_url=ftp://x",): "expected an http:// or https:// URL",
        ("commit_rpc_name=x'); drop table tickets; --",): "commit_rpc_name: expected",
        ("commit_rpc_name=public.absent",): "DB2 has no function public.absent(jsonb)",
        ("batch_size",): "expected KEY=VALUE",
    }
    for args, message in cases.items():
        proc = intake("config", "set", "live", *args, config=cfg)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    missing = intake("config", "set", "ghost", "batch_size=5", config=cfg)
    assert missing.returncode == 2
    assert snapshot(db1_dsn) == before
