"""The test webhook as a provider that meters its callers and goes down: its rate
limit, Retry-After forms and outages, as a real HTTP client sees them (the app
on a real loopback socket, in-process, no database)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from typer.testing import CliRunner

from intake_cli.faces import cli
from intake_cli.tools import testhook
from intake_cli.tools.testhook import Script, TestWebhook

# IMF-fixdate (RFC 9110 section 5.6.7): "Sun, 06 Nov 1994 08:49:37 GMT".
IMF_FIXDATE = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
WALL_AT_START = 1_700_000_000.6


class StubClock:
    """The server's monotonic clock, moved by hand; `wall` keeps step with it."""

    def __init__(self, now: float = 1000.25) -> None:
        self.start = self.now = now

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_AT_START + (self.now - self.start)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Served:
    hook: TestWebhook
    session: aiohttp.ClientSession
    url: str

    async def pay(self, key: str, **options: Any) -> Answer:
        async with self.session.post(
            self.url + "/validate",
            json={"idempotency_key": key},
            headers={"Idempotency-Key": key},
            **options,
        ) as response:
            return Answer(response.status, dict(response.headers), await response.json())

    async def control(self, method: str, path: str, body: Any = None) -> Answer:
        async with self.session.request(
            method, f"{self.url}/_control/{path}", json=body
        ) as response:
            return Answer(response.status, dict(response.headers), await response.json())

    async def script(self, **changes: Any) -> Answer:
        return await self.control("POST", "script", changes)

    async def counts(self) -> dict[str, Any]:
        return (await self.control("GET", "calls?limit=0")).body


@contextlib.asynccontextmanager
async def served(script: Script, clock: StubClock | None = None) -> AsyncIterator[Served]:
    if clock is None:
        hook = TestWebhook(script, None)
    else:
        hook = TestWebhook(script, None, clock=clock, wall=clock.wall)
    # aiohttp's own shutdown timeout (60 s): a hung call must end without it.
    runner = web.AppRunner(hook.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            yield Served(hook, session, url)
    finally:
        await runner.cleanup()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


def test_exactly_the_limit_is_accepted_in_a_window_then_429():
    async def test() -> None:
        async with served(Script(rate_limit=3), StubClock()) as hook:
            answers = [await hook.pay(f"k{n}") for n in range(5)]
            assert [a.status for a in answers] == [200, 200, 200, 429, 429]
            assert answers[3].body == {"reason": "rate limited"}
            counts = await hook.counts()
            assert counts["total"] == 5
            assert counts["by_status"]["200"] == 3
            assert counts["by_status"]["429"] == 2
            # A refused call decided nothing about its key.
            assert counts["per_key"] == {"k0": 1, "k1": 1, "k2": 1}

    run(test)


def test_the_window_resets_on_the_next_whole_second():
    clock = StubClock(1000.25)

    async def test() -> None:
        async with served(Script(rate_limit=2), clock) as hook:
            assert [(await hook.pay(f"a{n}")).status for n in range(3)] == [200, 200, 429]
            clock.now = 1000.99  # the same window
            assert (await hook.pay("a3")).status == 429
            clock.now = 1001.0
            assert [(await hook.pay(f"b{n}")).status for n in range(3)] == [200, 200, 429]
            clock.now = 1003.5  # windows may pass empty
            assert (await hook.pay("c0")).status == 200

    run(test)


def test_the_window_resets_on_the_real_clock_after_retry_after():
    async def test() -> None:
        async with served(Script(rate_limit=2)) as hook:
            statuses = []
            while 429 not in statuses:
                answer = await hook.pay(f"k{len(statuses)}")
                statuses.append(answer.status)
            assert statuses.count(200) <= 4  # the first window may have been nearly over
            await asyncio.sleep(int(answer.headers["Retry-After"]))
            assert (await hook.pay("after")).status == 200

    run(test)


def test_retry_after_in_seconds_is_whole_and_never_zero():
    clock = StubClock(1000.25)

    async def test() -> None:
        async with served(Script(rate_limit=1), clock) as hook:
            await hook.pay("first")
            assert (await hook.pay("second")).headers["Retry-After"] == "1"
            clock.now = 1000.999
            assert (await hook.pay("third")).headers["Retry-After"] == "1"

    run(test)


def test_retry_after_as_an_http_date_is_the_window_end_rounded_up():
    clock = StubClock(1000.25)

    async def test() -> None:
        async with served(Script(rate_limit=1, retry_after="date"), clock) as hook:
            await hook.pay("first")
            header = (await hook.pay("second")).headers["Retry-After"]
            assert IMF_FIXDATE.match(header), header
            when = parsedate_to_datetime(header)
            assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
            # The window ends 0.75 s after WALL_AT_START (…000.6): at …001.35, so …002.
            assert when.timestamp() == math.ceil(WALL_AT_START + 0.75) == 1_700_000_002

    run(test)


def test_retry_after_none_sends_no_header():
    async def test() -> None:
        async with served(Script(rate_limit=1, retry_after="none"), StubClock()) as hook:
            await hook.pay("first")
            answer = await hook.pay("second")
            assert answer.status == 429
            assert "Retry-After" not in answer.headers

    run(test)


def test_a_429_does_not_advance_a_keys_fail_first_count():
    clock = StubClock(1000.25)

    async def test() -> None:
        async with served(Script(rate_limit=1, fail_first=1), clock) as hook:
            assert (await hook.pay("other")).status == 503  # takes the window's one call
            assert (await hook.pay("k")).status == 429
            clock.now = 1001.25
            assert (await hook.pay("k")).status == 503  # still k's first real call
            clock.now = 1002.25
            assert (await hook.pay("k")).status == 200
            calls = (await hook.control("GET", "calls")).body
            assert calls["per_key"] == {"other": 1, "k": 2}
            k_calls = [(c["status"], c["decided"]) for c in calls["calls"] if c["key"] == "k"]
            assert k_calls == [(429, False), (503, True), (200, True)]

    run(test)


def test_an_outage_of_503_answers_every_call_until_switched_off():
    async def test() -> None:
        async with served(Script(fail_first=1)) as hook:
            assert (await hook.script(outage="503")).status == 200
            for _ in range(3):
                answer = await hook.pay("k")
                assert (answer.status, answer.body) == (503, {"reason": "unavailable"})
            await hook.script(outage=None)
            assert (await hook.pay("k")).status == 503  # fail_first: k's first decision
            assert (await hook.pay("k")).status == 200
            counts = await hook.counts()
            assert counts["per_key"] == {"k": 2}
            assert counts["by_status"]["503"] == 4
            assert counts["total"] == 5

    run(test)


def test_an_outage_that_drops_closes_the_connection_unanswered():
    async def test() -> None:
        async with served(Script(outage="drop")) as hook:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await hook.pay("k")
            with pytest.raises(aiohttp.ClientConnectionError):
                await hook.pay("k")
            await hook.script(outage=None)
            assert (await hook.pay("k")).status == 200  # the same client session
            counts = await hook.counts()
            assert counts["by_status"]["0"] == 2
            assert counts["total"] == 3  # the client did not retry behind our back
            assert counts["per_key"] == {"k": 1}

    run(test)


def test_an_outage_that_hangs_answers_nothing_until_the_client_gives_up():
    async def test() -> None:
        async with served(Script(outage="hang")) as hook:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await hook.pay("k", timeout=aiohttp.ClientTimeout(total=0.3))
            assert time.monotonic() - started < 5
            counts = await hook.counts()
            assert counts["by_status"]["0"] == 1
            assert counts["per_key"] == {}
            # The server lets the abandoned call go rather than hold it for good.
            deadline = time.monotonic() + 5
            while hook.hook.hanging and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert hook.hook.hanging == 0
            await hook.script(outage=None)
            assert (await hook.pay("k")).status == 200

    run(test)


def test_a_hung_call_ends_as_soon_as_the_server_stops():
    async def test() -> None:
        hook = TestWebhook(Script(outage="hang"), None)
        runner = web.AppRunner(hook.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/validate"
        async with aiohttp.ClientSession() as session:
            call = asyncio.ensure_future(session.post(url, headers={"Idempotency-Key": "k"}))
            while not hook.hanging:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await runner.cleanup()  # with aiohttp's 60 s shutdown timeout
            assert time.monotonic() - started < 2
            with pytest.raises(aiohttp.ClientConnectionError):
                await call
        assert hook.hanging == 0

    run(test)


def test_by_status_counts_every_kind_of_answer():
    clock = StubClock()

    async def test() -> None:
        async with served(Script(rate_limit=2, decline_share=1.0), clock) as hook:
            counts = await hook.counts()
            assert counts["by_status"] == {"200": 0, "402": 0, "429": 0, "503": 0, "0": 0}
            assert counts["total"] == 0
            await hook.pay("declined")
            await hook.script(decline_share=0.0)
            await hook.pay("approved")
            await hook.pay("limited")
            await hook.script(outage="503")
            await hook.pay("down")
            await hook.script(outage="drop")
            with pytest.raises(aiohttp.ClientConnectionError):
                await hook.pay("dropped")
            await hook.script(outage=None, fail_status=500, fail_first=1)
            clock.now += 1
            await hook.pay("failed")
            counts = await hook.counts()
            assert counts["by_status"] == {
                "200": 1, "402": 1, "429": 1, "503": 1, "0": 1, "500": 1
            }  # fmt: skip
            assert counts["total"] == sum(counts["by_status"].values()) == 6
            assert counts["calls"] == []
            assert counts["hanging"] == 0
            await hook.control("POST", "reset")
            assert (await hook.counts())["by_status"]["200"] == 0

    run(test)


def test_a_limit_returns_the_most_recent_calls_oldest_first():
    async def test() -> None:
        async with served(Script()) as hook:
            for n in range(5):
                await hook.pay(f"k{n}")
            recent = (await hook.control("GET", "calls?limit=2")).body["calls"]
            assert [c["key"] for c in recent] == ["k3", "k4"]
            everything = (await hook.control("GET", "calls")).body["calls"]
            assert [c["key"] for c in everything] == [f"k{n}" for n in range(5)]

    run(test)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_limit": 1.5}, "rate_limit"),
        ({"rate_limit": True}, "rate_limit"),
        ({"rate_limit": "10"}, "rate_limit"),
        ({"retry_after": "minutes"}, "retry_after"),
        ({"retry_after": None}, "retry_after"),
        ({"outage": "500"}, "outage"),
        ({"outage": 503}, "outage"),
        ({"outage": "none"}, "outage"),
        # All or nothing: a good value beside a bad one is not applied either.
        ({"rate_limit": 5, "outage": "down"}, "outage"),
        ({"outage": "hang", "retry_after": "later"}, "retry_after"),
    ],
)
def test_bad_script_values_are_refused_and_change_nothing(changes, field):
    async def test() -> None:
        async with served(Script()) as hook:
            before = (await hook.control("GET", "script")).body
            answer = await hook.script(**changes)
            assert answer.status == 400
            assert answer.body["reason"].startswith(f"{field}: expected")
            assert (await hook.control("GET", "script")).body == before
            assert (await hook.pay("k")).status == 200

    run(test)


def test_good_script_values_are_applied_and_shown():
    async def test() -> None:
        async with served(Script()) as hook:
            answer = await hook.script(rate_limit=100, retry_after="date", outage="hang")
            assert answer.status == 200
            shown = (await hook.control("GET", "script")).body
            assert (shown["rate_limit"], shown["retry_after"], shown["outage"]) == (
                100,
                "date",
                "hang",
            )

    run(test)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate-limit", "-1"],
        ["--rate-limit", "fast"],
        ["--retry-after", "minutes"],
        ["--outage", "500"],
    ],
)
def test_bad_option_values_exit_2(argv):
    result = CliRunner().invoke(cli.app, ["webhook-server", *argv])
    assert result.exit_code == 2, result.output


def test_the_options_reach_the_script(monkeypatch):
    seen: list[Script] = []

    async def no_serve(hook: TestWebhook, *args: Any, **kwargs: Any) -> None:
        seen.append(hook.script)

    monkeypatch.setattr(testhook, "serve", no_serve)
    argv = ["--rate-limit", "7", "--retry-after", "none", "--outage", "drop"]
    result = CliRunner().invoke(cli.app, ["webhook-server", *argv])
    assert result.exit_code == 0, result.output
    assert (seen[0].rate_limit, seen[0].retry_after, seen[0].outage) == (7, "none", "drop")
    assert type(seen[0].outage) is str  # plain JSON in GET /_control/script

    seen.clear()
    assert CliRunner().invoke(cli.app, ["webhook-server"]).exit_code == 0
    assert (seen[0].rate_limit, seen[0].retry_after, seen[0].outage) == (0, "seconds", None)
