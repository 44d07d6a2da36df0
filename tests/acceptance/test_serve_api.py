"""The admin API against a real `intake serve`: auth, refusals that change nothing, happy paths."""

from __future__ import annotations

import json

import psycopg
import pytest

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import make_event
from tests.acceptance.serve_support import TOKEN, dead_letter, serving
from tests.conftest import intake, pool_spec, run_intake, snapshot, write_config

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
    ("GET", "/api/events", None),
]


@pytest.fixture
def event(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10), pool_spec("other", 5)])
    intake("up", config=cfg, check=True)
    return cfg, db1_dsn


def engine_config(dsn: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select pool_id, to_jsonb(c) from intake.engine_config c").fetchall()
    return dict(rows)


@pytest.mark.slow
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


@pytest.mark.slow
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


# (method, path, body, status, field, a part of the message)
BAD_REQUESTS = [
    ("POST", "/api/pools/ghost/pause", None, 404, "pool", "pool 'ghost' is not provisioned"),
    ("POST", "/api/pools/Bad!Id/resume", None, 422, "pool", "pool id: expected 1-63 characters"),
    ("GET", "/api/pools/ghost/metrics", None, 404, "pool", "pool 'ghost' is not provisioned"),
    ("GET", "/api/pools/live/metrics?seconds=0", None, 422, "seconds", "seconds: expected"),
    ("GET", "/api/pools/live/metrics?seconds=ten", None, 422, "seconds", "seconds: expected"),
    ("PATCH", "/api/pools/ghost/settings", {"batch_size": 5}, 404, "pool", "not provisioned"),
    ("PATCH", "/api/pools/live/settings", b"{batch_size: 5", 400, None, "malformed JSON body"),
    ("PATCH", "/api/pools/live/settings", [1, 2], 422, None, "expected a JSON object"),
    ("PATCH", "/api/pools/live/settings", {}, 422, "body", "name at least one setting"),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"batch_size": "ten"},
        422,
        "batch_size",
        'batch_size: expected an integer from 1 to 10000, got "ten"',
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"batch_size": True},
        422,
        "batch_size",
        "expected an integer from 1 to 10000, got True",
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"batch_size": 5, "inventory": 3},
        422,
        "inventory",
        "inventory: not a live setting",
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"validation_webhook_url": "ftp://x"},
        422,
        "validation_webhook_url",
        "expected an http:// or https:// URL",
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"commit_rpc_name": "public.absent"},
        422,
        "commit_rpc_name",
        "DB2 has no function public.absent(jsonb)",
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        {"retry_base_seconds": 10, "retry_max_seconds": 5},
        422,
        None,
        "retry_base_seconds (10) is above retry_max_seconds (5)",
    ),
    (
        "PATCH",
        "/api/pools/live/settings",
        b'{"batch_size": 5, "batch_size": 6}',
        422,
        "batch_size",
        "batch_size is given twice",
    ),
    ("PATCH", "/api/pools/live/settings", b"x" * 300_000, 413, None, "request body over"),
    ("GET", "/api/dlq?limit=0", None, 422, "limit", "limit: expected an integer from 1 to 1000"),
    ("GET", "/api/dlq?after=-1", None, 422, "after", "after: expected an integer"),
    ("GET", "/api/dlq/abc", None, 422, "msg_id", "msg_id: expected a dead letter id"),
    ("GET", "/api/dlq/999999", None, 404, "msg_id", "no dead letter with id 999999"),
    ("POST", "/api/dlq/replay", {}, 422, "msg_ids", "name dead letter ids to replay"),
    (
        "POST",
        "/api/dlq/replay",
        {"msg_ids": [1], "all": True},
        422,
        "msg_ids",
        "name dead letter ids to replay",
    ),
    ("POST", "/api/dlq/replay", {"msg_ids": ["1"]}, 422, "msg_ids", "expected a list of dead"),
    ("POST", "/api/dlq/replay", {"msg_ids": [True]}, 422, "msg_ids", "expected a list of dead"),
    ("POST", "/api/dlq/replay", {"all": "yes"}, 422, "all", "all: expected true or false"),
    ("POST", "/api/dlq/replay", {"msg_ids": [999999]}, 404, "msg_ids", "no dead letter with id"),
    ("POST", "/api/dlq/replay", {"ids": [1]}, 422, "ids", "ids: not a field of this request"),
    ("POST", "/api/dlq/purge", {}, 422, "confirm", "purge deletes every dead letter"),
    ("POST", "/api/dlq/purge", {"confirm": "yes"}, 422, "confirm", "purge deletes every"),
    ("POST", "/api/drain/tick?pool=ghost", None, 404, "pool", "pool 'ghost' is not provisioned"),
    ("POST", "/api/drain/tick?pool=B@d", None, 422, "pool", "pool id: expected"),
    ("GET", "/api/nothing-here", None, 404, None, "Not Found"),
    ("DELETE", "/api/pools", None, 405, None, "Method Not Allowed"),
]


@pytest.mark.slow
def test_bad_requests_are_refused_naming_the_field_and_change_nothing(event):
    cfg, db1 = event
    dead_letter(db1, {"idempotency_key": "00000000-0000-0000-0000-000000000001", "pool_id": "live"})
    before = snapshot(db1)
    with serving(cfg) as server:
        for method, path, body, status, field, message in BAD_REQUESTS:
            sent: dict = {"json": body}
            if isinstance(body, bytes):
                sent = {"content": body, "headers": {"Content-Type": "application/json"}}
            response = server.request(method, path, **sent)
            assert response.status_code == status, (method, path, body, response.text)
            answer = response.json()
            assert answer["field"] == field, (method, path, answer)
            assert message in answer["error"], (method, path, answer)
        log = server.log()
    assert "admin_change" not in log
    assert "Traceback" not in log
    assert snapshot(db1) == before


def test_start_is_refused_off_loopback_without_a_token(event):
    cfg, _ = event
    proc = run_intake("serve", "--host", "0.0.0.0", "--port", "1", config=cfg)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve on 0.0.0.0 without INTAKE_ADMIN_TOKEN" in proc.stderr
    assert "INTAKE_ADMIN_TOKEN" in proc.stderr
    empty = run_intake("serve", config=cfg, env={"INTAKE_ADMIN_TOKEN": " "})
    assert empty.returncode == 2 and "INTAKE_ADMIN_TOKEN is set but empty" in empty.stderr


@pytest.mark.slow
def test_on_loopback_without_a_token_serve_makes_one_and_the_api_needs_it(event):
    cfg, db1 = event
    with serving(cfg, token=None) as server:
        made = server.token
        assert made is not None and len(made) >= 43
        # Open to nobody without it: not to local users, not to a web page.
        assert server.call("POST", "/api/pools/other/pause", token=None)[0] == 401
        assert server.call("GET", "/api/dlq", token=None)[0] == 401
        assert engine_config(db1)["other"]["paused"] is False
        assert server.call("POST", "/api/pools/other/pause")[0] == 200
        log = server.log()
    assert f"dashboard: {server.url}/#token={made}" in log
    change = next(json.loads(line) for line in log.splitlines() if '"admin_change"' in line)
    assert change["who"] == "token" and change["pool_id"] == "other"
    assert engine_config(db1)["other"]["paused"] is True
    # Each run makes its own.
    with serving(cfg, token=None) as again:
        assert again.token != made
        assert again.call("GET", "/api/status", token=made)[0] == 401


def test_openapi_describes_every_route(event):
    cfg, _ = event
    with serving(cfg) as server:
        status, spec = server.call("GET", "/api/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.1")
    from intake_cli.faces.serve.app import build_app
    from intake_cli.platform.config import load

    app = build_app(load(str(cfg)), token="x", host="127.0.0.1")
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or not (path.startswith("/api/") or path == "/metrics"):
            continue
        served.add((route.method.lower(), path))
    described = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert served - described == set()
    assert described - served == set()


def test_dead_letters_listed_in_pages_replayed_by_id_committed_by_a_tick_and_purged(
    workdir, db1_dsn, db2_dsn
):
    # Each key's first webhook call fails and no retry is allowed: a tick dead-letters them.
    with WebhookServer(fail_first=1) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 5, max_retries=0)
        keys = event.claim(3)
        with serving(event.config) as server:
            status, counts = server.call("POST", "/api/drain/tick?pool=drop")
            assert status == 200, counts
            assert (counts["read"], counts["dead"], counts["committed"]) == (3, 3, 0)
            status, first = server.call("GET", "/api/dlq?limit=2")
            assert status == 200 and len(first["letters"]) == 2
            status, rest = server.call("GET", f"/api/dlq?limit=2&after={first['next_after']}")
            assert len(rest["letters"]) == 1 and rest["next_after"] is None
            letters = first["letters"] + rest["letters"]
            assert sorted(letter["idempotency_key"] for letter in letters) == sorted(keys)
            chosen = letters[0]
            status, shown = server.call("GET", f"/api/dlq/{chosen['msg_id']}")
            assert status == 200 and shown["intent_state"]["state"] == "dead"
            status, replayed = server.call(
                "POST", "/api/dlq/replay", json={"msg_ids": [chosen["msg_id"]]}
            )
            assert status == 200, replayed
            assert [r["msg_id"] for r in replayed["replayed"]] == [chosen["msg_id"]]
            status, counts = server.call("POST", "/api/drain/tick")
            assert status == 200 and counts["committed"] == 1, counts
            assert event.tickets() == {chosen["idempotency_key"]: 1}
            status, purged = server.call("POST", "/api/dlq/purge", json={"confirm": "purge"})
            assert (status, purged["purged"]) == (200, 2)
            assert server.call("GET", "/api/dlq")[1]["letters"] == []
            log = server.log()
        assert event.queue_depth("intents_dlq") == 0
    actions = [json.loads(line) for line in log.splitlines() if '"admin_change"' in line]
    assert [(a["action"], a.get("msg_ids"), a.get("purged")) for a in actions] == [
        ("dlq_replay", [chosen["msg_id"]], None),
        ("dlq_purge", None, 2),
    ]
