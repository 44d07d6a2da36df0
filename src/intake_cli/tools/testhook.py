"""A scriptable validation webhook for tests and demos (`intake webhook-server`).

A real HTTP server on loopback that answers like a payment provider would:
approve, decline a deterministic share of idempotency keys, fail the first
calls of every key (or the first call of a share of keys), answer slowly
(every key, or a share of keys more slowly still), or refuse bad signatures.
Like a real provider it can also meter its callers and go down: beyond
`rate_limit` calls in a one-second window it answers 429 (with Retry-After in
seconds, as an HTTP-date, or not at all), and an `outage` answers every call
503, drops the connection without an answer, or never answers.

Every call is recorded, and the behaviour can be changed while it runs,
through a small control API under /_control/:

    GET  /_control/calls[?limit=N]  {"calls": [...], "per_key": {...}, "total": n,
                                     "by_status": {"200": n, "429": n, "0": n, ...},
                                     "dropped": n, "hanging": n}
                                    status 0: no answer (an outage's drop or hang);
                                    dropped: calls fallen off the log; hanging:
                                    calls held unanswered now
    GET  /_control/script           the behaviour in force
    POST /_control/script           {"decline_share", "fail_first", "fail_share",
                                     "fail_keys", "fail_status", "delay_ms",
                                     "slow_share", "slow_ms",
                                     "decline_reason", "fail_reason", "rate_limit",
                                     "retry_after": "seconds" | "date" | "none",
                                     "outage": null | "503" | "drop" | "hang"}
    POST /_control/reset            forget recorded calls and every counter

A call refused by the rate limit or an outage is recorded (with
"decided": false) but is no decision about its key: it is not counted in
`per_key`, so a `fail_first` key still fails its next call that gets through.

Nothing is logged per request: the server has to outrun the drain worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import typer
from aiohttp import web

from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.platform.signing import verify

# The call log keeps this many recent calls; per-key counters are never
# dropped, because fail_first and the tests' exactly-once checks rely on them.
KEEP_CALLS = 200_000

_APPROVED = b'{"status":"approved"}'
_DECLINED = b'{"reason":"card declined"}'
_FAILED = b'{"status":"unavailable"}'
_RATE_LIMITED = b'{"reason":"rate limited"}'
_OUTAGE = b'{"reason":"unavailable"}'
_JSON = "application/json"

# Always present in /_control/calls' by_status, so a reader can index them
# without a default; 0 is a call that got no answer (an outage's drop or hang).
_REPORTED_STATUSES = (200, 402, 429, 503, 0)
# How often a hung call looks whether its client has given up: aiohttp does
# not cancel a handler when its client goes, and a benchmark can hang many.
_HANG_POLL_S = 0.2


class RetryAfter(enum.StrEnum):
    """How a 429 tells the caller when to come back."""

    seconds = "seconds"
    date = "date"
    none = "none"


class Outage(enum.StrEnum):
    """How the webhook is down."""

    unavailable = "503"
    drop = "drop"
    hang = "hang"


@dataclass
class Script:
    decline_share: float = 0.0
    fail_first: int = 0
    fail_status: int = 503
    delay_ms: int = 0
    fail_share: float = 0.0
    # A share of keys answered after slow_ms instead of delay_ms: some calls
    # of a batch still in flight while the others have been answered.
    slow_share: float = 0.0
    slow_ms: int = 0
    # The webhook's own words in a decline's or a failure's {"reason": …}
    # (None: the usual body); any text, hostile to a terminal included.
    decline_reason: str | None = None
    fail_reason: str | None = None
    # Calls a second, counted in fixed one-second windows of the monotonic
    # clock, as many providers meter (0: no limit).
    rate_limit: int = 0
    retry_after: str = RetryAfter.seconds.value
    # None, or an Outage value: every call fails that way, before any limit.
    outage: str | None = None
    # Keys whose every call fails with fail_status: intents that fail for
    # their own reasons while the provider answers the others.
    fail_keys: list[str] = field(default_factory=list)

    def update(self, changes: Any) -> None:
        """Apply a /_control/script body; all or nothing."""
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object")
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        merged = {**asdict(self), **changes}
        problems = _script_problems(**merged)
        if problems:
            raise ValueError("; ".join(problems))
        self.decline_share = float(merged["decline_share"])
        self.fail_first = int(merged["fail_first"])
        self.fail_status = int(merged["fail_status"])
        self.delay_ms = int(merged["delay_ms"])
        self.fail_share = float(merged["fail_share"])
        self.slow_share = float(merged["slow_share"])
        self.slow_ms = int(merged["slow_ms"])
        self.decline_reason = merged["decline_reason"]
        self.fail_reason = merged["fail_reason"]
        self.rate_limit = int(merged["rate_limit"])
        self.retry_after = merged["retry_after"]
        self.outage = merged["outage"]
        self.fail_keys = list(merged["fail_keys"])

    def delay_s(self, key: str) -> float:
        return (self.slow_ms if answers_slowly(key, self.slow_share) else self.delay_ms) / 1000


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _script_problems(
    decline_share: Any,
    fail_first: Any,
    fail_status: Any,
    delay_ms: Any,
    fail_share: Any,
    slow_share: Any,
    slow_ms: Any,
    decline_reason: Any = None,
    fail_reason: Any = None,
    rate_limit: Any = 0,
    retry_after: Any = RetryAfter.seconds.value,
    outage: Any = None,
    fail_keys: Any = (),
) -> list[str]:
    problems = []
    if not isinstance(fail_keys, list | tuple) or not all(isinstance(k, str) for k in fail_keys):
        problems.append(f"fail_keys: expected a list of idempotency keys, got {fail_keys!r:.80}")
    shares = (("decline_share", decline_share), ("fail_share", fail_share))
    for name, share in (*shares, ("slow_share", slow_share)):
        if not _is_number(share) or not 0 <= share <= 1:
            problems.append(f"{name}: expected a number from 0 to 1, got {share!r}")
    if not _is_int(fail_first) or fail_first < 0:
        problems.append(f"fail_first: expected an integer >= 0, got {fail_first!r}")
    if not _is_int(fail_status) or not 100 <= fail_status <= 599:
        problems.append(f"fail_status: expected a status from 100 to 599, got {fail_status!r}")
    for name, ms in (("delay_ms", delay_ms), ("slow_ms", slow_ms)):
        if not _is_int(ms) or ms < 0:
            problems.append(f"{name}: expected an integer >= 0, got {ms!r}")
    for name, reason in (("decline_reason", decline_reason), ("fail_reason", fail_reason)):
        if reason is not None and not isinstance(reason, str):
            problems.append(f"{name}: expected a string or null, got {reason!r}")
    if not _is_int(rate_limit) or rate_limit < 0:
        problems.append(f"rate_limit: expected an integer >= 0 (0: no limit), got {rate_limit!r}")
    forms = [form.value for form in RetryAfter]
    if retry_after not in forms:
        problems.append(f"retry_after: expected one of {', '.join(forms)}, got {retry_after!r}")
    modes = [mode.value for mode in Outage]
    if outage not in (None, *modes):
        problems.append(f"outage: expected null or one of {', '.join(modes)}, got {outage!r}")
    return problems


def _reason_body(reason: str | None, stock: bytes) -> bytes:
    return stock if reason is None else json.dumps({"reason": reason}).encode()


def _drawn(key: str, share: float, salt: str) -> bool:
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}{key}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < share


def declines(key: str, share: float) -> bool:
    """Whether the server declines this key: fixed per key, so a retry gets the same answer."""
    return _drawn(key, share, "")


def fails_first_call(key: str, share: float) -> bool:
    """Whether this key's first call fails (a transient outage); drawn apart from declines."""
    return _drawn(key, share, "fail:")


def answers_slowly(key: str, share: float) -> bool:
    """Whether this key's calls are answered after slow_ms; drawn apart from the others."""
    return _drawn(key, share, "slow:")


class TestWebhook:
    """The server's state and handlers; one instance per process.

    `clock` (monotonic seconds) places calls in rate-limit windows and `wall`
    (epoch seconds) dates them; a test passes its own to cross a window
    without sleeping.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        script: Script,
        secret: str | None,
        keep_calls: int = KEEP_CALLS,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.script = script
        self.secret = secret
        self.clock = clock
        self.wall = wall
        # Tuples, not dicts: a long test run records hundreds of thousands.
        # (key, path, status, signature_ok, body's key, time, decided)
        self.calls: deque[tuple[str, str, int, bool | None, str | None, float, bool]] = deque(
            maxlen=keep_calls
        )
        self.per_key: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.total = 0
        self.hanging = 0  # calls held unanswered by a "hang" outage right now
        self._window = -1  # the current rate-limit window: whole seconds of `clock`
        self._window_calls = 0
        self._stopping = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        # Registered first: the catch-all validation route must not shadow them.
        app.router.add_get("/_control/calls", self.get_calls)
        app.router.add_get("/_control/script", self.get_script)
        app.router.add_post("/_control/script", self.set_script)
        app.router.add_post("/_control/reset", self.reset)
        app.router.add_route("*", "/_control/{rest:.*}", self.no_control)
        app.router.add_post("/{path:.*}", self.validate)
        self._stopping = asyncio.Event()
        app.on_shutdown.append(self._shutting_down)
        return app

    async def _shutting_down(self, app: web.Application) -> None:
        # Hung calls end now rather than when aiohttp's shutdown timeout
        # cancels them: a stopped webhook goes down at once.
        self._stopping.set()

    def _record(
        self,
        key: str,
        path: str,
        status: int,
        signature_ok: bool | None,
        body_key: str | None,
        decided: bool,
    ) -> None:
        self.calls.append((key, path, status, signature_ok, body_key, self.wall(), decided))
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.total += 1

    async def validate(self, request: web.Request) -> web.StreamResponse:
        script = self.script
        key = request.headers.get("Idempotency-Key")
        # A provider that is down or throttling answers before it looks at
        # the call, and decides nothing about its key.
        if script.outage is not None:
            return await self._outage(request, key or "", script.outage)
        if script.rate_limit:
            now = self.clock()
            if not self._admit(now, script.rate_limit):
                self._record(key or "", request.path, 429, None, None, decided=False)
                return web.Response(
                    status=429,
                    body=_RATE_LIMITED,
                    content_type=_JSON,
                    headers=self._retry_after(now, script.retry_after),
                )
        if not key:
            return web.Response(
                status=400, body=b'{"reason":"missing Idempotency-Key header"}', content_type=_JSON
            )
        body = await request.read()
        signature_ok = None if self.secret is None else verify(self.secret, request.headers, body)
        body_key = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("idempotency_key"), str):
                body_key = parsed["idempotency_key"]

        count = self.per_key.get(key, 0) + 1
        self.per_key[key] = count
        if signature_ok is False:
            status, answer = 401, b'{"reason":"bad signature"}'
        elif (
            count <= script.fail_first
            or (count == 1 and fails_first_call(key, script.fail_share))
            or key in script.fail_keys
        ):
            status, answer = script.fail_status, _reason_body(script.fail_reason, _FAILED)
        elif declines(key, script.decline_share):
            status, answer = 402, _reason_body(script.decline_reason, _DECLINED)
        else:
            status, answer = 200, _APPROVED
        # Recorded on arrival, so a test can see calls that are still in flight.
        self._record(key, request.path, status, signature_ok, body_key, decided=True)
        delay_s = script.delay_s(key)
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(status=status, body=answer, content_type=_JSON)

    def _admit(self, now: float, limit: int) -> bool:
        """Count a call in its window, unless the window is full."""
        window = math.floor(now)
        if window != self._window:
            self._window, self._window_calls = window, 0
        if self._window_calls >= limit:
            return False
        self._window_calls += 1
        return True

    def _retry_after(self, now: float, form: str) -> dict[str, str] | None:
        if form == RetryAfter.none:
            return None
        left_s = self._window + 1 - now
        if form == RetryAfter.seconds:
            # Whole seconds, and never 0: "come back now" would be a lie.
            return {"Retry-After": str(max(1, math.ceil(left_s)))}
        # An HTTP-date has whole seconds; rounded up, so it is never early.
        return {"Retry-After": formatdate(math.ceil(self.wall() + left_s), usegmt=True)}

    async def _outage(self, request: web.Request, key: str, mode: str) -> web.StreamResponse:
        if mode == Outage.unavailable:
            self._record(key, request.path, 503, None, None, decided=False)
            return web.Response(status=503, body=_OUTAGE, content_type=_JSON)
        self._record(key, request.path, 0, None, None, decided=False)
        if mode == Outage.hang:
            # Until the caller gives up (aiohttp would let the handler run on)
            # or the server stops; switching the outage off does not answer
            # a call already lost.
            self.hanging += 1
            try:
                while not self._stopping.is_set() and _connected(request):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), _HANG_POLL_S)
            finally:
                self.hanging -= 1
        return _drop(request)

    async def get_calls(self, request: web.Request) -> web.Response:
        limit_text = request.query.get("limit")
        try:
            limit = len(self.calls) if limit_text is None else int(limit_text)
        except ValueError:
            return _error(400, f"limit: expected an integer, got {limit_text!r}")
        # The most recent `limit` calls, oldest first; walked from the newest
        # end, so ?limit=0 costs nothing however long the log.
        recent = list(itertools.islice(reversed(self.calls), max(0, limit)))
        recent.reverse()
        calls = [
            {
                "key": key,
                "path": path,
                "status": status,
                "signature_ok": signature_ok,
                "body_idempotency_key": body_key,
                "time": at,
                "decided": decided,
            }
            for key, path, status, signature_ok, body_key, at, decided in recent
        ]
        by_status = dict.fromkeys(map(str, _REPORTED_STATUSES), 0)
        by_status.update((str(status), n) for status, n in sorted(self.by_status.items()))
        return web.json_response(
            {
                "calls": calls,
                "per_key": self.per_key,
                "total": self.total,
                "by_status": by_status,
                "dropped": self.total - len(self.calls),
                "hanging": self.hanging,
            }
        )

    async def get_script(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.script))

    async def set_script(self, request: web.Request) -> web.Response:
        try:
            self.script.update(await request.json())
        except ValueError as exc:
            return _error(400, str(exc))
        return web.json_response(asdict(self.script))

    async def reset(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.per_key = {}
        self.by_status = {}
        self.total = 0
        # A fresh window too: a test that resets expects the whole limit.
        self._window, self._window_calls = -1, 0
        return web.json_response({"reset": True})

    async def no_control(self, request: web.Request) -> web.Response:
        return _error(404, f"no control endpoint {request.method} {request.path}")


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _drop(request: web.Request) -> web.Response:
    """Close the connection with no answer: the caller sees the server disconnect."""
    if request.transport is not None:
        request.transport.close()
    # Never sent: aiohttp finds the connection closed and lets the call go.
    return web.Response(status=503)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"reason": reason}, status=status)


async def serve(
    hook: TestWebhook,
    host: str,
    port: int,
    ready_file: Path | None,
    *,
    announce: bool = True,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM.

    `reuse_port`: several processes listen on one port (SO_REUSEPORT) and the
    kernel spreads connections among them (the benchmarks' webhook fleet).
    """
    runner = web.AppRunner(
        hook.app(),
        access_log=None,
        handle_signals=False,
        # A stopped webhook must go down at once, even with delayed answers pending.
        shutdown_timeout=0.5,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as exc:
            why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise UsageError(f"cannot listen on {host}:{port}: {why}") from exc
        bound = runner.addresses[0][1]
        if ready_file is not None:
            # Written whole and then renamed, so a waiting parent never reads half a port.
            partial = ready_file.with_name(ready_file.name + ".partial")
            partial.write_text(f"{bound}\n", encoding="utf-8")
            partial.replace(ready_file)
        if announce:
            print(
                f"webhook server listening on http://{host}:{bound}/", file=sys.stderr, flush=True
            )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()


def share_option(default: float, flag: str, help: str) -> Any:
    """A --*-share option: a fraction of idempotency keys, from 0 to 1."""
    return typer.Option(default, flag, min=0.0, max=1.0, help=help)


def webhook_server_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(
        8787, "--port", min=0, max=65535, help="Port to listen on; 0 picks a free one."
    ),
    decline_share: float = share_option(
        0.0,
        "--decline-share",
        "Share of idempotency keys declined with 402 (decided per key, stable).",
    ),
    fail_first: int = typer.Option(
        0, "--fail-first", min=0, help="Answer the first K calls of every key with --fail-status."
    ),
    fail_share: float = share_option(
        0.0,
        "--fail-share",
        "Share of idempotency keys whose first call fails with --fail-status (stable).",
    ),
    fail_status: int = typer.Option(
        503, "--fail-status", min=100, max=599, help="Status of the failing calls."
    ),
    delay_ms: int = typer.Option(0, "--delay-ms", min=0, help="Answer every call this late."),
    slow_share: float = share_option(
        0.0,
        "--slow-share",
        "Share of idempotency keys answered after --slow-ms instead of --delay-ms (stable).",
    ),
    slow_ms: int = typer.Option(
        0, "--slow-ms", min=0, help="How late the --slow-share keys are answered."
    ),
    secret_env: str | None = typer.Option(
        None,
        "--secret-env",
        metavar="NAME",
        help="Verify Standard Webhooks signatures with the secret in this environment variable.",
    ),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="Write the bound port to this file once listening."
    ),
    decline_reason: str | None = typer.Option(
        None, "--decline-reason", help='Answer declines with {"reason": TEXT}.'
    ),
    fail_reason: str | None = typer.Option(
        None, "--fail-reason", help='Answer failing calls with {"reason": TEXT}.'
    ),
    rate_limit: int = typer.Option(
        0,
        "--rate-limit",
        min=0,
        metavar="N",
        help="Answer calls beyond N a second (fixed one-second windows) with 429; 0: no limit.",
    ),
    retry_after: RetryAfter = typer.Option(
        RetryAfter.seconds.value,
        "--retry-after",
        help="How a 429 says when to come back: Retry-After in seconds, as an HTTP-date, "
        "or no header at all.",
    ),
    outage: Outage | None = typer.Option(
        None,
        "--outage",
        help="Be down: answer every call 503, drop its connection unanswered, "
        "or never answer (until the caller gives up).",
    ),
) -> None:
    """Run a scriptable validation webhook on loopback, for tests and demos.

    It can also play a provider that meters its callers (--rate-limit,
    --retry-after) or is down (--outage). While it runs, POST /_control/script
    changes any setting (all or nothing, as JSON fields named like the
    options) and GET /_control/calls counts the calls by status.
    """
    secret = None
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise typer.BadParameter(
                f"environment variable {secret_env} is not set", param_hint="--secret-env"
            )
    script = Script(
        decline_share=decline_share,
        fail_first=fail_first,
        fail_status=fail_status,
        delay_ms=delay_ms,
        fail_share=fail_share,
        slow_share=slow_share,
        slow_ms=slow_ms,
        decline_reason=decline_reason,
        fail_reason=fail_reason,
        rate_limit=rate_limit,
        retry_after=RetryAfter(retry_after).value,
        outage=None if outage is None else Outage(outage).value,
    )
    asyncio.run(serve(TestWebhook(script, secret), host, port, ready_file))


def _main() -> None:
    try:
        typer.run(webhook_server_command)
    except IntakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    _main()
