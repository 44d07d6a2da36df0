"""`intake gateway` at the HTTP/1.1 wire (issue 24): what the buyers' door does
with the bytes a client sends, whatever HTTP server it runs on.

Raw sockets, so each test writes exactly the bytes it means (a browser or an
HTTP library would fix up, refuse or reorder most of them). Where any safe
answer will do (a 400 or a closed connection), only the safe property is
asserted: no claim made, nothing smuggled through, the door still open to the
next buyer. One gateway serves the whole module."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from intake_cli.platform.embedded import Cluster
from tests.acceptance.gateway_support import Gateway, running_gateway, token
from tests.conftest import drop_database, intake, new_database, pool_spec, write_config

pytestmark = pytest.mark.timeout(180)

MAX_BODY = 1024
# Short, so that the slow-client cases cost seconds; the idle keep-alive limit
# is min(15, this).
CLIENT_TIMEOUT_S = 2
# Time on top of CLIENT_TIMEOUT_S a server may take to close a slow client's
# connection: a timer's lateness on a busy machine, not a second chance.
CLOSE_MARGIN_S = 4.0
SETTINGS = {
    # Every connection comes from 127.0.0.1: no per-address limit here.
    "per_ip_rate": 1_000_000,
    "per_ip_burst": 1_000_000,
    # Each case asks as a buyer of its own a few times; one case floods to see 429.
    "per_buyer_rate": 1,
    "per_buyer_burst": 20,
    "max_body_bytes": MAX_BODY,
    "client_timeout_s": CLIENT_TIMEOUT_S,
    "max_wait_ms": 2,
}
CLAIM = "/v1/pools/drop/claim"
JSON_TYPE = "application/json; charset=utf-8"


@pytest.fixture(scope="module")
def gw(
    workdir: Path, cluster: Cluster, template_db: str, db2_cluster: Cluster
) -> Iterator[Gateway]:
    """One gateway for every case: `drop` has units to spare, `tiny` one (for 409)."""
    db1 = new_database(cluster, template_db)
    db2 = new_database(db2_cluster)
    try:
        pools = [pool_spec("drop", 1000), pool_spec("tiny", 1)]
        config = write_config(workdir, db1, db2, pools, gateway=SETTINGS)
        intake("up", config=config, check=True)
        with running_gateway(config, db1, db2) as gateway:
            try:
                yield gateway
            finally:
                # Sooner than running_gateway would: on SIGTERM aiohttp waits for
                # every handler under way, and an event stream whose reader hung
                # up is one until its next write (a heartbeat, every 15 s).
                gateway.proc.terminate()
                try:
                    gateway.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    gateway.proc.kill()
    finally:
        drop_database(cluster, db1)
        drop_database(db2_cluster, db2)


def _buyer() -> str:
    return str(uuid.uuid4())


def request(
    method: str,
    path: str | bytes,
    buyer: str | None = None,
    *,
    headers: bytes = b"",
    body: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """One request's bytes, as written: `headers` is raw header lines, each ending CRLF."""
    target = path.encode() if isinstance(path, str) else path
    head = b"%s %s %s\r\nHost: 127.0.0.1\r\n" % (method.encode(), target, version)
    if buyer is not None:
        head += b"Authorization: Bearer %s\r\n" % token(buyer).encode()
    return head + headers + b"\r\n" + body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """One client connection whose bytes the test writes and reads itself."""

    def __init__(self, gw: Gateway, timeout: float = 10.0) -> None:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False where the server had already closed (or reset) the connection."""
        try:
            self.sock.sendall(data)
        except OSError:  # EPIPE, ECONNRESET: a server may close on what it has seen so far
            return False
        return True

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.eof = not chunk
        self.buffer += chunk
        return bool(chunk)

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            assert self._fill(), f"closed {count - len(self.buffer)} bytes short of the body"
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            assert self._fill(), f"closed inside an answer's head: {self.buffer!r}"
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def answer(self, *, head: bool = False) -> Answer | None:
        """The next answer, complete (1xx interim ones included); None where the
        server closed the connection before starting one."""
        while not self.buffer:
            if not self._fill():
                return None
        status_line = self._line()
        version, status, *_ = status_line.split(b" ", 2)
        assert version in (b"HTTP/1.1", b"HTTP/1.0"), status_line
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().decode().lower()] = value.strip().decode()
        code = int(status)
        if head or code < 200 or code in (204, 304):
            return Answer(code, headers, b"")
        if "chunked" in headers.get("transfer-encoding", ""):
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            while self._line():  # trailers
                pass
            return Answer(code, headers, body)
        if "content-length" in headers:
            return Answer(code, headers, self._take(int(headers["content-length"])))
        while self._fill():  # delimited by the close
            pass
        body, self.buffer = self.buffer, b""
        return Answer(code, headers, body)

    def closed_within(self, seconds: float) -> bytes | None:
        """What else the server sent before closing, within `seconds`; None if it
        kept the connection open that long."""
        deadline = time.monotonic() + seconds
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            self._fill()
        rest, self.buffer = self.buffer, b""
        return rest


def _held(gw: Gateway, *buyers: str) -> int:
    """Units these buyers hold in any pool."""
    rows = gw.rows(
        "select count(*) from intake.allocations where locked_by::text = any(%s)", (list(buyers),)
    )
    return int(rows[0][0])


def _claims(gw: Gateway) -> tuple[int, int]:
    """Every unit held and every intent queued: a claim moves both."""
    locked = gw.rows("select count(*) from intake.allocations where status = 'locked'")
    queued = gw.rows("select count(*) from pgmq.q_intents")
    return int(locked[0][0]), int(queued[0][0])


def _still_serves(gw: Gateway) -> None:
    """A new connection after the case is answered as any other."""
    with Wire(gw) as wire:
        wire.send(request("GET", "/healthz"))
        answer = wire.answer()
    assert answer is not None and answer.status == 200 and answer.json()["ok"] is True


def _assert_json(answer: Answer | None, status: int) -> dict[str, Any]:
    assert answer is not None, "closed instead of answering"
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("content-type") == JSON_TYPE, answer.headers
    assert int(answer.headers["content-length"]) == len(answer.body)
    body = answer.json()
    assert isinstance(body, dict)
    return body


# 1-4: connections that carry several requests, or just one.


def test_keep_alive_answers_two_requests_in_order(gw: Gateway) -> None:
    buyer = _buyer()
    with Wire(gw) as wire:
        wire.send(request("GET", CLAIM, buyer))
        lookup = _assert_json(wire.answer(), 404)
        wire.send(request("POST", CLAIM, buyer))
        claim = _assert_json(wire.answer(), 200)
    assert lookup["state"] == "none"
    assert (claim["outcome"], claim["user_id"]) == ("claimed", buyer)
    assert _held(gw, buyer) == 1


def test_pipelined_requests_are_answered_in_order_each_complete(gw: Gateway) -> None:
    buyer = _buyer()
    with Wire(gw) as wire:
        wire.send(
            request("POST", CLAIM, buyer)
            + request("GET", "/healthz")
            + request("POST", CLAIM, buyer)
        )
        first, second, third = (_assert_json(wire.answer(), 200) for _ in range(3))
    assert first["outcome"] == "claimed"
    assert second["ok"] is True
    assert third["outcome"] == "already_claimed"
    assert third["idempotency_key"] == first["idempotency_key"]
    assert _held(gw, buyer) == 1


def test_http_1_0_without_keep_alive_is_answered_then_closed(gw: Gateway) -> None:
    with Wire(gw) as wire:
        wire.send(request("GET", "/healthz", version=b"HTTP/1.0"))
        assert _assert_json(wire.answer(), 200)["ok"] is True
        # Well before the idle limit: closed because the client asked for no more.
        assert wire.closed_within(CLIENT_TIMEOUT_S / 2) == b""


def test_connection_close_is_answered_then_closed(gw: Gateway) -> None:
    with Wire(gw) as wire:
        wire.send(request("GET", "/healthz", headers=b"Connection: close\r\n"))
        assert _assert_json(wire.answer(), 200)["ok"] is True
        assert wire.closed_within(CLIENT_TIMEOUT_S / 2) == b""


# 5-6: heads too large, and bytes that are not HTTP at all.

OVERSIZED = {
    "100 KB request line": (b"?" + b"x" * 100_000, b""),
    "100 KB header value": (b"", b"X-Big: " + b"a" * 100_000 + b"\r\n"),
    "200 headers of 1 KB": (b"", b"".join(b"X-H%d: %s\r\n" % (n, b"a" * 1000) for n in range(200))),
}


@pytest.mark.parametrize(("query", "headers"), OVERSIZED.values(), ids=OVERSIZED.keys())
def test_an_oversized_head_is_refused_without_a_claim(
    gw: Gateway, query: bytes, headers: bytes
) -> None:
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw) as wire:
        wire.send(request("POST", CLAIM.encode() + query, buyer, headers=headers))
        answer = wire.answer()
    # aiohttp: 400 (a line above 8190 bytes, too many headers), then closes.
    assert answer is None or 400 <= answer.status < 500, answer
    _still_serves(gw)
    assert _held(gw, buyer) == 0 and _claims(gw) == before


NOT_HTTP = {
    "TLS client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
    "a greeting": b"hello\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("garbage", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_bytes_that_are_not_http_get_400_or_a_close(gw: Gateway, garbage: bytes) -> None:
    with Wire(gw) as wire:
        wire.send(garbage)
        answer = wire.answer()
        assert answer is None or answer.status == 400, answer
        # Nothing more to say to such a client.
        assert wire.closed_within(CLIENT_TIMEOUT_S + CLOSE_MARGIN_S) == b""
    _still_serves(gw)


# 7: the body limit.

BIG = b"x" * (4 * MAX_BODY)
TOO_LARGE = {
    "content-length": (b"Content-Length: %d\r\n" % len(BIG), BIG),
    "chunked": (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(BIG), BIG)),
    # The answer cannot wait for 100 MB that will never come.
    "100 MB announced": (b"Content-Length: 100000000\r\n", b"x" * (2 * MAX_BODY)),
}


@pytest.mark.parametrize(("headers", "body"), TOO_LARGE.values(), ids=TOO_LARGE.keys())
def test_a_body_above_max_body_bytes_is_413_without_a_claim(
    gw: Gateway, headers: bytes, body: bytes
) -> None:
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw, timeout=CLIENT_TIMEOUT_S + CLOSE_MARGIN_S) as wire:
        wire.send(request("POST", CLAIM, buyer, headers=headers, body=body))
        assert "error" in _assert_json(wire.answer(), 413)
    assert _held(gw, buyer) == 0 and _claims(gw) == before


WITHIN = {
    "content-length": (b"Content-Length: 100\r\n", b"x" * 100),
    "chunked": (
        b"Transfer-Encoding: chunked\r\n",
        b"40\r\n%s\r\n24\r\n%s\r\n0\r\n\r\n" % (b"x" * 64, b"y" * 36),
    ),
}


@pytest.mark.parametrize("refused", ["too large", "malformed"])
def test_a_refusal_behind_pipelined_requests_comes_after_their_answers(
    gw: Gateway, refused: str
) -> None:
    """Requests read before a refusal are answered first, in order; then the
    refusal, then the close: nothing after it is read as a request."""
    buyer = _buyer()
    before = _claims(gw)
    behind = (
        request("POST", CLAIM, buyer, headers=b"Content-Length: %d\r\n" % len(BIG), body=BIG)
        if refused == "too large"
        else b"POST "
        + CLAIM.encode()
        + b" HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    smuggled = request("POST", CLAIM, buyer)
    with Wire(gw, timeout=CLIENT_TIMEOUT_S + CLOSE_MARGIN_S) as wire:
        wire.send(request("GET", "/healthz") + request("GET", "/healthz") + behind + smuggled)
        for _ in range(2):
            assert _assert_json(wire.answer(), 200)["ok"] is True
        assert "error" in _assert_json(wire.answer(), 413 if refused == "too large" else 400)
        assert wire.closed_within(CLIENT_TIMEOUT_S + CLOSE_MARGIN_S) == b""
    assert _held(gw, buyer) == 0 and _claims(gw) == before


@pytest.mark.parametrize(("headers", "body"), WITHIN.values(), ids=WITHIN.keys())
def test_a_body_within_the_limit_is_read_and_the_claim_made(
    gw: Gateway, headers: bytes, body: bytes
) -> None:
    buyer = _buyer()
    with Wire(gw) as wire:
        # The body is read to its end: the next request on the connection is in step.
        wire.send(request("POST", CLAIM, buyer, headers=headers, body=body))
        wire.send(request("GET", "/healthz"))
        assert _assert_json(wire.answer(), 200)["outcome"] == "claimed"
        assert _assert_json(wire.answer(), 200)["ok"] is True
    assert _held(gw, buyer) == 1


# 8: clients that take their time.


def test_a_head_never_finished_is_closed_within_client_timeout(gw: Gateway) -> None:
    """Slowloris: part of a request line, then silence."""
    with Wire(gw) as wire:
        started = time.monotonic()
        wire.send(b"POST /v1/pools/dr")
        rest = wire.closed_within(CLIENT_TIMEOUT_S + CLOSE_MARGIN_S)
        took = time.monotonic() - started
    # aiohttp closes without a word (its idle timer, started with the
    # connection); a 408 first would do as well.
    assert rest is not None, f"still open after {took:.1f} s"
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest


def test_a_head_trickled_a_byte_at_a_time_is_closed_within_client_timeout(
    gw: Gateway,
) -> None:
    """Each byte must not buy the client more time: the limit is on the whole head."""
    head = request("POST", CLAIM, _buyer(), headers=b"X-Padding: " + b"p" * 200)
    with Wire(gw) as wire:
        started = time.monotonic()
        deadline = started + CLIENT_TIMEOUT_S + CLOSE_MARGIN_S
        closed = False
        for byte in head:
            if not wire.send(bytes([byte])) or wire.closed_within(0.2) is not None:
                closed = True
                break
            assert time.monotonic() < deadline, "still open"
        took = time.monotonic() - started
    assert closed, f"the whole head went through in {took:.1f} s: trickle it slower"


def test_an_idle_keep_alive_connection_is_closed(gw: Gateway) -> None:
    with Wire(gw) as wire:
        wire.send(request("GET", "/healthz"))
        assert _assert_json(wire.answer(), 200)["ok"] is True
        started = time.monotonic()
        rest = wire.closed_within(min(15, CLIENT_TIMEOUT_S) + CLOSE_MARGIN_S)
        took = time.monotonic() - started
    assert rest == b"", f"still open after {took:.1f} s" if rest is None else rest


def test_a_body_never_finished_is_408_without_a_claim(gw: Gateway) -> None:
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw, timeout=CLIENT_TIMEOUT_S + CLOSE_MARGIN_S) as wire:
        wire.send(request("POST", CLAIM, buyer, headers=b"Content-Length: 100\r\n", body=b"x" * 10))
        assert "error" in _assert_json(wire.answer(), 408)
        # Not pinned: whether the connection is closed then. aiohttp keeps it
        # open while it waits up to 10 s more for the rest of the body.
    assert _held(gw, buyer) == 0 and _claims(gw) == before


# 9: paths and methods.


def test_an_unknown_path_is_404(gw: Gateway) -> None:
    with Wire(gw) as wire:
        for path in ("/nope", "/v1/pools", "/v1/pools/drop/claim/nope", "/v1/pools/drop"):
            wire.send(request("GET", path, _buyer()))
            answer = wire.answer()
            assert answer is not None and answer.status == 404, (path, answer)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_another_method_on_claim_is_405_without_a_claim(gw: Gateway, method: str) -> None:
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw) as wire:
        wire.send(request(method, CLAIM, buyer))
        answer = wire.answer()
    assert answer is not None and answer.status == 405, answer
    # RFC 9110: a 405 names the methods the resource has.
    allowed = {m.strip() for m in answer.headers.get("allow", "").split(",")}
    assert {"GET", "POST"} <= allowed, answer.headers
    assert _held(gw, buyer) == 0 and _claims(gw) == before


@pytest.mark.parametrize("signed", [True, False], ids=["buyer", "no token"])
def test_head_on_claim_makes_no_claim_and_sends_no_body(gw: Gateway, signed: bool) -> None:
    """aiohttp answers HEAD as the lookup (404 for a buyer with no claim, 401
    without a token), headers only; pinned: no claim, no body."""
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw) as wire:
        # A body after the HEAD answer would be read as the start of the next one.
        wire.send(request("HEAD", CLAIM, buyer if signed else None) + request("GET", "/healthz"))
        head = wire.answer(head=True)
        assert head is not None and head.status < 500, head
        assert _assert_json(wire.answer(), 200)["ok"] is True
    assert _held(gw, buyer) == 0 and _claims(gw) == before


# 10: what a buyer writes where the pool id goes.

ODD_POOLS = {
    "encoded script tag": b"/v1/pools/%3Cscript%3Ealert(1)%3C%2Fscript%3E/claim",
    "encoded slash": b"/v1/pools/a%2Fb/claim",
    "encoded NUL": b"/v1/pools/%00/claim",
    "encoded UTF-8": b"/v1/pools/caf%C3%A9/claim",
    "raw UTF-8": "/v1/pools/café/claim".encode(),
    "encoded newline": b"/v1/pools/a%0D%0AX-Injected:%201/claim",
}


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("path", ODD_POOLS.values(), ids=ODD_POOLS.keys())
def test_an_odd_pool_id_is_unknown_pool_and_never_echoed(
    gw: Gateway, path: bytes, method: str
) -> None:
    buyer = _buyer()
    before = _claims(gw)
    with Wire(gw) as wire:
        wire.send(request(method, path, buyer))
        answer = wire.answer()
    assert answer is not None
    # aiohttp refuses raw non-ASCII in the request line with 400, and decodes
    # every other id to one that is not configured.
    if answer.status != 400:
        assert _assert_json(answer, 404)["outcome"] == "unknown_pool"
    assert b"<script" not in answer.body.lower()
    assert "x-injected" not in answer.headers
    assert _held(gw, buyer) == 0 and _claims(gw) == before


# 11: Expect: 100-continue.


def test_expect_100_continue_claims_exactly_once(gw: Gateway) -> None:
    buyer = _buyer()
    before = _claims(gw)
    body = b'{"note": "ignored"}'
    head = request(
        "POST", CLAIM, buyer, headers=b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(body)
    )
    with Wire(gw) as wire:
        wire.send(head)
        # As curl does: wait a moment for "go ahead", then send the body anyway.
        ready = select.select([wire.sock], [], [], 1.0)[0]
        answer = wire.answer() if ready else None
        if answer is None or answer.status == 100:
            wire.send(body)
            answer = wire.answer()
        claim = _assert_json(answer, 200)
    assert (claim["outcome"], claim["user_id"]) == ("claimed", buyer)
    assert _held(gw, buyer) == 1
    assert _claims(gw) == (before[0] + 1, before[1] + 1)


# 12: requests whose length two parsers could read two ways.

SMUGGLING = {
    "two content-lengths": (b"Content-Length: 5\r\nContent-Length: 40\r\n", b"xxxxx"),
    "content-length list": (b"Content-Length: 5, 40\r\n", b"xxxxx"),
    "content-length then chunked": (
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    ),
    "chunked then content-length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        b"0\r\n\r\n",
    ),
    "chunked not last": (b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "unknown coding": (b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
}


@pytest.mark.parametrize(("headers", "body"), SMUGGLING.values(), ids=SMUGGLING.keys())
def test_an_ambiguous_length_is_refused_and_what_follows_never_answered(
    gw: Gateway, headers: bytes, body: bytes
) -> None:
    buyer, smuggled = _buyer(), _buyer()
    before = _claims(gw)
    with Wire(gw) as wire:
        wire.send(
            request("POST", CLAIM, buyer, headers=headers, body=body)
            + request("POST", CLAIM, smuggled)
        )
        answer = wire.answer()
        # RFC 9112 6.3: 400, or 501 for a coding it does not know; then close.
        assert answer is None or answer.status in (400, 501), answer
        rest = wire.closed_within(CLIENT_TIMEOUT_S + CLOSE_MARGIN_S)
    assert rest == b"", f"a second answer: {rest!r}" if rest else "left open"
    _still_serves(gw)
    assert _held(gw, buyer, smuggled) == 0 and _claims(gw) == before


# 13-14: the lookup and the event stream.


def test_a_query_string_on_the_lookup_is_the_lookup(gw: Gateway) -> None:
    buyer = _buyer()
    with Wire(gw) as wire:
        wire.send(request("POST", CLAIM, buyer))
        claim = _assert_json(wire.answer(), 200)
        wire.send(request("GET", CLAIM + "?x=1&fields=all", buyer))
        view = _assert_json(wire.answer(), 200)
    assert view["idempotency_key"] == claim["idempotency_key"]
    assert view["state"] != "none"


def test_the_event_stream_opens_with_a_claim_frame(gw: Gateway) -> None:
    buyer = _buyer()
    with httpx.Client(timeout=10) as client:
        headers = {"Authorization": f"Bearer {token(buyer)}"}
        claim = client.post(f"{gw.url}{CLAIM}", headers=headers).json()
        assert claim["outcome"] == "claimed"
        frame: dict[str, str] = {}
        with client.stream("GET", f"{gw.url}{CLAIM}/events", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].split(";")[0] == "text/event-stream"
            for line in stream.iter_lines():
                if line.startswith(":"):
                    continue  # a comment (keep-alive)
                if not line and frame:
                    break
                field, _, value = line.partition(":")
                frame[field] = value.removeprefix(" ")
    assert frame["event"] == "claim"
    data = json.loads(frame["data"])
    assert data["idempotency_key"] == claim["idempotency_key"]
    assert data["state"] != "none"


# 15: every JSON answer says it is JSON and how long it is.


def _answers(wire: Wire, status: int) -> Answer | None:
    """The answer to a request on `wire` that gets `status`."""
    buyer = _buyer()
    if status == 409:
        # Two buyers for tiny's one unit: the second finds it sold out.
        wire.send(request("POST", "/v1/pools/tiny/claim", _buyer()))
        wire.answer()
        wire.send(request("POST", "/v1/pools/tiny/claim", buyer))
    elif status == 429:
        # From memory (no such pool), until the buyer's burst is spent.
        for _ in range(SETTINGS["per_buyer_burst"]):
            wire.send(request("POST", "/v1/pools/made-up/claim", buyer))
            wire.answer()
        wire.send(request("POST", "/v1/pools/made-up/claim", buyer))
    else:
        wire.send(
            {
                200: request("POST", CLAIM, buyer),
                401: request("POST", CLAIM, headers=b"Authorization: Bearer not-a-token\r\n"),
                404: request("POST", "/v1/pools/made-up/claim", buyer),
                413: request("POST", CLAIM, buyer, headers=TOO_LARGE["content-length"][0])
                + TOO_LARGE["content-length"][1],
            }[status]
        )
    return wire.answer()


@pytest.mark.parametrize("status", [200, 401, 404, 409, 413, 429])
def test_json_answers_say_json_and_their_exact_length(gw: Gateway, status: int) -> None:
    with Wire(gw) as wire:
        answer = _answers(wire, status)
        _assert_json(answer, status)
        assert answer is not None and answer.headers.get("transfer-encoding") is None
        # Nothing after the body: the next answer on the connection starts
        # where that length said (a server may close after a 413 instead).
        wire.send(request("GET", "/healthz"))
        following = wire.answer()
        if following is not None or status != 413:
            assert _assert_json(following, 200)["ok"] is True
    if status == 429:
        assert int(answer.headers["retry-after"]) >= 1
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")


# Stopping: an open event stream does not hold the gateway's exit.


@pytest.mark.serial
def test_a_stop_does_not_wait_on_open_event_streams(
    workdir: Path, cluster: Cluster, template_db: str, db2_cluster: Cluster
) -> None:
    """SIGTERM while a buyer reads their event stream: the gateway ends at
    once, cleanly. A stream has no end of its own; waiting for it held a stop
    to its grace period (aiohttp: until the stream's handler ended)."""
    db1 = new_database(cluster, template_db)
    db2 = new_database(db2_cluster)
    try:
        config = write_config(workdir, db1, db2, [pool_spec("drop", 10)], gateway=SETTINGS)
        intake("up", config=config, check=True)
        with running_gateway(config, db1, db2) as gateway, httpx.Client(timeout=10) as client:
            headers = {"Authorization": f"Bearer {token(_buyer())}"}
            assert client.post(f"{gateway.url}{CLAIM}", headers=headers).status_code == 200
            with client.stream("GET", f"{gateway.url}{CLAIM}/events", headers=headers) as stream:
                assert next(stream.iter_lines()).startswith("id: ")
                stopped = time.monotonic()
                gateway.proc.terminate()
                assert gateway.proc.wait(timeout=30) == 0
                took = time.monotonic() - stopped
        # Well inside the 5 s grace that requests under way are given.
        assert took < 4.0, f"the gateway took {took:.1f} s to stop"
    finally:
        drop_database(cluster, db1)
        drop_database(db2_cluster, db2)
