"""The webhook's calls on the wire: HTTP/1.1 POSTs over kept-alive connections.

Why not aiohttp's client, which the drain used until issue 24. The webhook
call is most of a drain worker's CPU, and the bar is CPU per intent. Measured
with `python benchmarks/http_clients.py` (64 keep-alive POSTs in flight, 2
cores, benchmarks/README.md "The webhook client"): aiohttp's ClientSession
spent 60-63 µs of client CPU per call, intake's client over it 64-68. The
Rust-backed clients spent 33 (pyreqwest) and 43-46 (rnet), but run their
own threads that call back into the interpreter, and one of them aborted a
process at exit (a thread touching the interpreter as it finalized) in 1 of
6 tries. This module does what the drain needs and no more, on the event
loop's own sockets: llhttp's parser (httptools, which the gateway already
uses) reads each answer, so status lines, lengths, chunked bodies and
malformed answers are the parser's business, not ours. What is written here
is a connection's life: a pool of idle connections per origin, a request
written in one piece, the answer's status and the two headers the verdict
needs, at most a few bytes of its body kept, and the connection closed
whenever it cannot be reused as it stands.

No redirect is followed, no cookie kept, no proxy taken from the
environment: one intent's call carries nothing into another's, and a
webhook answers for itself.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httptools

# How long an idle connection is kept for the next call.
KEEPALIVE_S = 30.0
# Header names whose values the verdict reads (lowercase, as compared).
WANTED_HEADERS = frozenset({b"content-type", b"retry-after"})
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))


class CallFailed(Exception):
    """No usable answer: the reason is the exception's text, for the log and the intent."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    # The values of WANTED_HEADERS that the answer carried, by lowercase name.
    headers: dict[bytes, str]
    # The first bytes of the body (at most the client's keep_bytes).
    head: bytes


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's calls go, and the start of each request's head."""

    origin: tuple[str, str, int]  # scheme, host, port
    host: str
    port: int
    tls: bool
    request_line_and_host: bytes

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises CallFailed for anything but an absolute http(s) URL with a host."""
        if any(c <= " " or c == "\x7f" for c in url):
            raise CallFailed(f"invalid webhook URL {url!r}")
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname or ""
            # A name in another script goes on the wire as DNS knows it.
            host = host if host.isascii() else host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError) as exc:
            raise CallFailed(f"invalid webhook URL {url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise CallFailed(f"invalid webhook URL {url!r}")
        tls = parts.scheme == "https"
        if port is None:
            port = 443 if tls else 80
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if tls else 80):
            authority = f"{authority}:{port}"
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        # Only what HTTP cannot carry as it is: characters beyond ASCII.
        target = quote(target, safe=_PRINTABLE_ASCII)
        line = f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n"
        return cls((parts.scheme, host, port), host, port, tls, line.encode("ascii"))


def request_bytes(target: Target, headers: dict[str, str], body: bytes) -> bytes:
    """One POST, head and body, ready to write. Raises CallFailed for a header
    that would break the head (a line break or a control character in it)."""
    lines = [target.request_line_and_host]
    for name, value in headers.items():
        text = f"{name}: {value}\r\n"
        if not text.isascii() or any(c < " " and c != "\t" for c in text[:-2]):
            raise CallFailed(f"header {name} cannot be sent as it is")
        lines.append(text.encode("ascii"))
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one call at a time."""

    def __init__(self, keep_bytes: int, drain_bytes: int) -> None:
        self._keep_bytes = keep_bytes
        self._drain_bytes = drain_bytes
        self._transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self.reusable = False
        self._new_message()

    def _new_message(self) -> None:
        self._headers: dict[bytes, str] = {}
        self._head = bytearray()
        self._seen = 0
        self._framed = False  # the answer says where its body ends
        self._headers_done = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection cannot be trusted again.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(CallFailed(f"invalid HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed:
            # An answer without a length ends where the connection does.
            self._answer()
        else:
            self._fail(CallFailed("server disconnected"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in WANTED_HEADERS:
            self._headers[lowered] = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self._keep_bytes - len(self._head)
        if room > 0:
            self._head += body[:room]
        self._seen += len(body)
        if self._seen > self._drain_bytes:
            # Not read to its end: answered with what was kept, and closed.
            self._answer()
            self.close()

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (102, 103): the final one follows on this parser.
            self._new_message()
            return
        self.reusable = self._parser.should_keep_alive()
        self._answer()

    # -- the call

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    def _answer(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(
                Answer(self._parser.get_status_code(), self._headers, bytes(self._head))
            )

    def _fail(self, exc: CallFailed) -> None:
        # Closed, so never reused (done_with_call asks whether it is open).
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    @property
    def open(self) -> bool:
        return not self.lost and self._transport is not None and not self._transport.is_closing()

    def done_with_call(self) -> bool:
        """After a call: whether this connection may carry the next one."""
        keep = self.reusable and self.open
        self._reset()
        return keep

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class WirePool:
    """Idle connections per origin, taken most recent first, for one event loop."""

    def __init__(self, *, keep_bytes: int, drain_bytes: int) -> None:
        self._keep_bytes = keep_bytes
        self._drain_bytes = drain_bytes
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._tls: ssl.SSLContext | None = None

    def target(self, url: str) -> Target:
        """The URL parsed once (a worker calls a handful of webhooks, each many times)."""
        found = self._targets.get(url)
        if found is None:
            found = Target.parse(url)
            if len(self._targets) < 1024:
                self._targets[url] = found
        return found

    async def post(self, target: Target, request: bytes) -> Answer:
        """Send one request and wait for its answer. Raises CallFailed, or OSError
        when no connection could be made; the caller bounds the wait."""
        conn = self._take(target) or await self._connect(target)
        clean = False
        try:
            answer = await conn.send(request)
            clean = True
            return answer
        finally:
            if clean and conn.done_with_call():
                conn.idle_since = time.monotonic()
                self._idle.setdefault(target.origin, []).append(conn)
            else:
                # A call that failed, timed out or was cancelled leaves its
                # connection mid-answer: never reused.
                conn.close()

    def _take(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target.origin)
        expired = time.monotonic() - KEEPALIVE_S
        while idle:
            conn = idle.pop()
            if conn.open and conn.idle_since > expired:
                return conn
            conn.close()
        return None

    async def _connect(self, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        _, conn = await loop.create_connection(
            lambda: _Connection(self._keep_bytes, self._drain_bytes),
            target.host,
            target.port,
            ssl=tls,
            server_hostname=target.host if tls else None,
        )
        return conn

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
