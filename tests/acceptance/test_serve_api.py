"""The admin API against a real `intake serve`: auth, refusals that change nothing, happy paths."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.acceptance.serve_support import TOKEN, serving
from tests.conftest import pool_spec, run_intake, snapshot, write_config

# Every route, with a body that would be accepted.
ROUTES = [
    ("GET", "/api/status", None),
    ("GET", "/api/snapshot", None),
    ("GET", "/api/pools", None),
    ("GET", "/api/pools/live/metrics?seconds=60", None),
    ("POST", "/api/pools/live/pause", None),
    ("POST", "/api/pools/live/resume", None),
    ("PATCH", "/api/pools/live/settings", {"batch_size": 7}),
    ("GET", "/api/dlq?limit=5", None),
    ("GET", "/api/dlq/1", None),
    ("POST", "/api/dlq/replay", {"all": True}),
    ("POST", "/api/dlq/purge", {"confirm": "purge"}),
    ("GET", "/api/workers", None),
    ("GET", "/api/openapi.json", None),
    ("POST", "/api/drain/tick", None),
]


@pytest.fixture
def event(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10), pool_spec("other", 5)])
    run_intake("up", config=cfg, check=True)
    return cfg, db1_dsn


def engine_config(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select pool_id, to_jsonb(c) from intake.engine_config c").fetchall()
    return dict(rows)


def dead_letter(dsn: str, intent: dict, state: str = "validated") -> int:
    """Put a message in the DLQ the way the drain would."""
    body = {"intent": intent, "state": state, "attempts": 3, "last_error": "DB2 unavailable"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pgmq.send('intents_dlq', %s::jsonb)", (json.dumps(body),)
        ).fetchone()[0]


def test_every_route_refuses_a_missing_or_wrong_token_and_changes_nothing(event):
    cfg, db1 = event
    dead_letter(db1, {"idempotency_key": "00000000-0000-0000-0000-000000000001", "pool_id": "live"})
    before = snapshot(db1)
    with serving(cfg) as server:
        for method, path, body in ROUTES:
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
                response = server.request(method, path, token=token, json=body)
                assert response.status_code == 401, (method, path, token, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert response.json()["field"] is None
            lower = server.request(
                method, path, token=None, json=body, headers={"Authorization": TOKEN}
            )
            assert lower.status_code == 401, (method, path)
        # /metrics is open on loopback.
        assert server.request("GET", "/metrics", token=None).status_code == 200
    assert snapshot(db1) == before


def test_pause_resume_and_settings_show_in_engine_config(event):
    cfg, db1 = event
    with serving(cfg) as server:
        assert server.call("POST", "/api/pools/live/pause") == (
            200,
            {"pool_id": "live", "paused": True},
        )
        assert engine_config(db1)["live"]["paused"] is True
        assert engine_config(db1)["other"]["paused"] is False
        status, body = server.call("POST", "/api/pools/live/resume")
        assert status == 200 and engine_config(db1)["live"]["paused"] is False
        status, body = server.call(
            "PATCH", "/api/pools/live/settings", json={"batch_size": 500, "retry_max_seconds": 90}
        )
        assert status == 200, body
        assert body["changed"] == {
            "batch_size": {"old": 100, "new": 500},
            "retry_max_seconds": {"old": 60.0, "new": 90.0},
        }
        assert engine_config(db1)["live"]["batch_size"] == 500
        status, pools = server.call("GET", "/api/pools")
        assert status == 200
        assert [p["pool_id"] for p in pools["pools"]] == ["live", "other"]
        log = server.log()
    changes = [json.loads(line) for line in log.splitlines() if '"admin_change"' in line]
    assert [(c["action"], c["pool_id"], c["who"]) for c in changes] == [
        ("pause", "live", "token"),
        ("resume", "live", "token"),
        ("settings", "live", "token"),
    ]
    assert all(c["remote"] == "127.0.0.1" for c in changes)
