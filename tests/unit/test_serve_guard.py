"""serve's locks and its tick watch, without a server: which requests pass, when ticks are late."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from intake_cli.faces.serve.auth import Guard, _same_origin, _split_host, check_start
from intake_cli.faces.serve.tick import TickExpectation, TickWatch, schedule_interval_s
from intake_cli.platform.errors import UsageError

ADMIN = "admin-token-3f9c1e7a5b2d8f4e6a0c9b1d"
TICK = "tick-token-8e2a6c4f0b9d7e5a3c1f2b4d"


def guard(*allowed: str, host: str = "127.0.0.1") -> Guard:
    return Guard.build(token=ADMIN, host=host, tick_token=TICK, allowed_hosts=allowed)


def request(method: str, path: str, **headers: str):
    return make_mocked_request(method, path, headers=headers)


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("LOCALHOST", ("localhost", None)),
        ("[::1]:80", ("::1", 80)),
        ("intake.example.", ("intake.example", None)),
        ("[::1", None),
        ("[::1]x", None),
        ("host:port", None),
        ("host:123456", None),
        (":80", None),
        ("", None),
    ],
)
def test_host_headers_are_split_strictly(header, parsed):
    assert _split_host(header) == parsed


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://intake.example", "intake.example", True),
        ("https://intake.example:443", "intake.example", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://localhost:8080", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080@evil.example", "127.0.0.1:8080", False),
        ("null", "127.0.0.1:8080", False),
        ("file://", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080/path", "127.0.0.1:8080", False),
        ("http://127.0.0.1:99999", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", None, False),
    ],
)
def test_an_origin_is_this_server_only_when_host_and_port_match(origin, host, same):
    assert _same_origin(origin, host) is same


@pytest.mark.parametrize(
    ("host", "passes"),
    [
        ("127.0.0.1:1", True),
        ("[::1]:1", True),
        ("10.1.2.3", True),  # an address cannot be rebound
        ("localhost:1", True),
        ("intake.example.test", True),
        ("INTAKE.example.test:9", True),
        ("evil.localhost:1", False),
        ("rebind.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("intake.example.test.evil", False),
        ("", False),
    ],
)
def test_host_must_name_this_server(host, passes):
    refusal = guard("intake.example.test").host_refusal(request("GET", "/api/status", Host=host))
    assert (refusal is None) is passes


def test_a_name_serve_is_bound_to_is_its_own():
    bound = guard(host="admin.internal")
    assert bound.host_refusal(request("GET", "/metrics", Host="admin.internal:8080")) is None
    assert bound.loopback is False


@pytest.mark.parametrize(
    ("method", "path", "token", "who"),
    [
        ("GET", "/api/status", ADMIN, "token"),
        ("POST", "/api/drain/tick", ADMIN, "token"),
        ("POST", "/api/drain/tick", TICK, "tick"),
        ("GET", "/api/drain/tick", TICK, None),
        ("POST", "/api/dlq/purge", TICK, None),
        ("GET", "/api/status", TICK, None),
        ("GET", "/api/status", None, None),
        ("GET", "/api/status", ADMIN[:-1], None),
        ("GET", "/metrics", None, "loopback"),
        ("GET", "/metrics", TICK, "loopback"),
        ("GET", "/", None, "open"),
    ],
)
def test_each_token_opens_only_its_own_paths(method, path, token, who):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    assert guard().who(request(method, path, **headers)) == who


def test_without_a_token_serve_makes_one_on_loopback_and_refuses_elsewhere():
    made = check_start("127.0.0.1", 8080, None)
    other = check_start("127.0.0.1", 8080, None)
    assert made.token != other.token and len(made.token) >= 43
    assert f"http://127.0.0.1:8080/#token={made.token}" in (made.notice or "")
    assert check_start("::1", 9, None).notice.count("http://[::1]:9/") == 2
    assert check_start("0.0.0.0", 1, ADMIN) == check_start("127.0.0.1", 1, ADMIN)
    with pytest.raises(UsageError, match="without INTAKE_ADMIN_TOKEN"):
        check_start("0.0.0.0", 8080, None)


def test_tick_intervals_from_pg_cron_schedules():
    assert schedule_interval_s("5 seconds") == 5
    assert schedule_interval_s(" 1 second ") == 1
    assert schedule_interval_s("* * * * *") == 60
    assert schedule_interval_s("*/2 * * * *") == 60


def test_ticks_are_expected_from_the_job_or_the_first_tick_and_late_after_three_intervals():
    watch = TickWatch(TickExpectation())
    start = watch.started_at
    assert watch.state(start + 1000)["expected"] is False
    assert watch.state(start + 1000)["stale"] is False
    watch.job = {"jobname": "intake-drain-tick", "schedule": "5 seconds", "active": True}
    state = watch.state(start + 29)
    assert (state["expected"], state["stale"], state["stale_after_s"]) == (True, False, 30)
    assert watch.state(start + 31)["stale"] is True
    watch.job = {"jobname": "intake-drain-tick", "schedule": "* * * * *", "active": True}
    assert watch.state(start + 179)["stale"] is False
    assert watch.state(start + 181)["stale"] is True
    watch.job = {"jobname": "intake-drain-tick", "schedule": "5 seconds", "active": False}
    assert watch.state(start + 181)["expected"] is False
    watch.job = None
    watch.arrived()
    arrived = watch.last_at
    assert arrived is not None
    state = watch.state(arrived + 59)
    assert (state["expected"], state["stale"], state["arrived"]) == (True, False, 1)
    assert watch.state(arrived + 181)["stale"] is True


def test_the_operators_word_on_ticks_wins():
    told = TickWatch(TickExpectation(expected=False, stale_after_s=5))
    told.job = {"jobname": "intake-drain-tick", "schedule": "5 seconds", "active": True}
    told.arrived()
    assert told.state(told.started_at + 100)["expected"] is False
    assert told.state(told.started_at + 100)["stale"] is False
    expecting = TickWatch(TickExpectation(expected=True, stale_after_s=5))
    assert expecting.state(expecting.started_at + 6)["stale"] is True
    assert expecting.state(expecting.started_at + 6)["stale_after_s"] == 5
