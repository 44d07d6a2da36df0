"""No web page may drive or read `intake serve`: hosts, origins, content types, the tick's token.

A page in the operator's browser can send requests to 127.0.0.1 (a form, a
no-cors fetch, a beacon), and with DNS rebinding read the answers under its
own name. Each test sends what such a page sends, to every route, and
checks the refusal and that DB1 is exactly as it was. The valid admin
token is sent too where a header could carry it: each lock holds on its
own, not only because the page lacks the token. The same attacks from a
real browser page on another origin: tests/acceptance/test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from intake_cli.faces.serve.auth import TICK_TOKEN_ENV
from tests.acceptance.serve_support import TOKEN, dead_letter, serving
from tests.conftest import intake, pool_spec, snapshot, write_config

TICK_TOKEN = "serve-test-tick-token-9d2b7e4c1a6f3e8b0d5a"
BUYER = "buyer-7a1c"

CHANGES = [
    ("POST", "/api/pools/live/pause", {}),
    ("POST", "/api/pools/live/resume", {}),
    ("PATCH", "/api/pools/live/settings", {"batch_size": 7}),
    ("POST", "/api/dlq/replay", {"all": True}),
    ("POST", "/api/dlq/purge", {"confirm": "purge"}),
    ("POST", "/api/drain/tick", {}),
]
READS = [
    "/api/status",
    "/api/snapshot",
    "/api/pools",
    "/api/pools/live/metrics?seconds=60",
    "/api/dlq",
    "/api/dlq/1",
    "/api/workers",
    "/api/openapi.json",
    "/metrics",
]


@pytest.fixture
def event(workdir, db1_dsn, db2_dsn):
    cfg = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("live", 10)])
    intake("up", config=cfg, check=True)
    dead_letter(
        db1_dsn, {"idempotency_key": "00000000-0000-0000-0000-00000000000a", "user_id": BUYER}
    )
    return cfg, db1_dsn


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.slow
def test_changes_sent_as_a_web_page_sends_them_are_refused_and_change_nothing(event):
    cfg, db1 = event
    before = snapshot(db1)
    with serving(cfg) as server:
        here = f"127.0.0.1:{_port(server.url)}"
        elsewhere = f"http://127.0.0.1:{_port(server.url) + 1}"
        userinfo = f"http://{here}@evil.example"
        for method, path, body in CHANGES:
            raw = json.dumps(body).encode()
            # (headers, expected status): an HTML form, a no-cors fetch, a
            # beacon, another site, another port of this host, a sandboxed frame.
            attempts = [
                ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
                ({"Content-Type": "text/plain"}, 415),
                ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
                ({}, 415),
                ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403),
                ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
                ({"Content-Type": "application/json", "Origin": elsewhere}, 403),
                ({"Content-Type": "application/json", "Origin": "null"}, 403),
                ({"Content-Type": "application/json", "Origin": userinfo}, 403),
                ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403),
                ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403),
                ({"Content-Type": "application/json", "Host": "rebind.evil.example"}, 403),
            ]
            for headers, status in attempts:
                response = server.request(method, path, content=raw, headers=headers)
                assert response.status_code == status, (method, path, headers, response.text)
                assert "error" in response.json()
        log = server.log()
    assert "admin_change" not in log and "Traceback" not in log
    assert snapshot(db1) == before


@pytest.mark.slow
def test_reads_under_another_name_or_from_another_origin_show_no_data(event):
    cfg, db1 = event
    before = snapshot(db1)
    with serving(cfg) as server:
        port = _port(server.url)
        for path in [*READS, "/api/events"]:
            for headers in (
                {"Host": f"rebind.evil.example:{port}"},
                {"Host": "rebind.evil.example"},
                {"Host": f"localhost.evil.example:{port}"},
                {"Host": f"127.0.0.1.nip.io:{port}"},
                {"Host": f"evil.localhost:{port}"},
                {"Host": f"127.0.0.1:{port}:80"},
                {"Host": ""},
                {"Origin": "http://evil.example"},
                {"Sec-Fetch-Site": "cross-site"},
            ):
                for token in (TOKEN, None):
                    response = server.request("GET", path, token=token, headers=headers, timeout=10)
                    assert response.status_code == 403, (path, headers, response.text)
                    assert BUYER not in response.text and "intake_pool" not in response.text
    assert snapshot(db1) == before


@pytest.mark.slow
def test_the_servers_own_names_and_origin_are_served(event):
    cfg, db1 = event
    with serving(cfg, args=("--allowed-host", "Intake.Example.Test")) as server:
        port = _port(server.url)
        for host, origin in (
            (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
            (f"localhost:{port}", f"http://localhost:{port}"),
            (f"intake.example.test:{port}", f"http://intake.example.test:{port}"),
            # Behind a TLS proxy: the browser's origin is https on the default port.
            ("intake.example.test", "https://intake.example.test"),
            ("intake.example.test.", "https://intake.example.test"),
        ):
            headers = {"Host": host, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
            status, body = server.call("GET", "/api/dlq", headers=headers)
            assert status == 200 and body["letters"][0]["user_id"] == BUYER, (host, body)
            assert server.request("GET", "/metrics", token=None, headers=headers).status_code == 200
        status, _ = server.call(
            "POST",
            "/api/pools/live/pause",
            headers={"Origin": server.url, "Content-Type": "application/json; charset=utf-8"},
        )
        assert status == 200
    with psycopg.connect(db1) as conn:
        assert conn.execute("select paused from intake.engine_config").fetchone()[0] is True


def test_the_tick_token_can_tick_and_do_nothing_else(event):
    cfg, db1 = event
    before = snapshot(db1)
    with serving(cfg, env={TICK_TOKEN_ENV: TICK_TOKEN}) as server:
        for method, path, body in CHANGES[:-1]:
            response = server.request(method, path, token=TICK_TOKEN, json=body)
            assert response.status_code == 401, (method, path, response.text)
        for path in READS[:-2]:
            assert server.request("GET", path, token=TICK_TOKEN).status_code == 401, path
        assert server.request("GET", "/api/drain/tick", token=TICK_TOKEN).status_code == 401
        assert snapshot(db1) == before
        status, counts = server.call("POST", "/api/drain/tick", token=TICK_TOKEN)
        assert status == 200 and counts["read"] == 0, counts
        # The admin token still ticks.
        assert server.call("POST", "/api/drain/tick")[0] == 200


@pytest.mark.slow
@pytest.mark.serial
def test_serve_says_when_drain_ticks_stop_arriving(event):
    cfg, _ = event
    with serving(cfg, args=("--tick-stale-after", "2")) as server:
        status, answer = server.call("GET", "/api/status")
        assert status == 200
        tick = answer["drain_tick"]
        # No tick job in DB1 and no tick yet: not expected, never stale.
        assert (tick["expected"], tick["stale"], tick["last_at"]) == (False, False, None)
        assert server.call("POST", "/api/drain/tick")[0] == 200
        tick = server.call("GET", "/api/status")[1]["drain_tick"]
        assert (tick["expected"], tick["stale"], tick["arrived"]) == (True, False, 1)
        assert tick["age_s"] < 2 and tick["last_outcome"] == "ok"
        time.sleep(2.5)
        tick = server.call("GET", "/api/status")[1]["drain_tick"]
        assert tick["stale"] is True and tick["age_s"] >= 2
        scraped = server.request("GET", "/metrics", token=None).text
        assert "intake_drain_tick_stale 1.0" in scraped
        assert "intake_drain_tick_expected 1.0" in scraped
        assert "intake_drain_tick_stale_after_seconds 2.0" in scraped
        assert "intake_drain_tick_age_seconds " in scraped
    # Told to expect them: stale from the start when none comes.
    with serving(cfg, args=("--expect-ticks", "--tick-stale-after", "1")) as server:
        time.sleep(1.5)
        tick = server.call("GET", "/api/status")[1]["drain_tick"]
        assert (tick["expected"], tick["stale"], tick["age_s"]) == (True, True, None)
        assert tick["expected_because"] == "serve was started with --expect-ticks"
