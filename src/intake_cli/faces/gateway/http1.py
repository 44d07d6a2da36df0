"""HTTP/1.1 for the buyers' door: llhttp's parser (httptools) under a small protocol.

Why not a framework. The gateway answers three paths, each with JSON or an
event stream, and its bar is CPU per request (issue 24: 40 µs a position
lookup, all in). Measured on one core with wrk, 100 keep-alive connections
and a fixed 60-byte JSON answer (docs/gateway.md, "The HTTP layer"): aiohttp
spent 33 µs of CPU per request, uvicorn 23, granian 15, this module 8. The
part that must be exact, reading requests off the wire, is llhttp's (Node's
parser, through httptools, as uvicorn uses it): it refuses malformed
requests and the smuggling shapes (two lengths, a length beside chunked).
What is written here is only a connection's life: keep-alive, pipelined
requests answered in order, limits on the head and the body, timeouts, and
back-pressure for event streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

log = logging.getLogger(__name__)

# A request's line and headers together. aiohttp's limits were 8190 bytes a
# line or header; a whole head above this is no buyer's.
HEAD_LIMIT = 16 * 1024
# Bytes received while a head is incomplete, some of which may be requests
# pipelined behind it: the parser's buffer for one connection is held to this.
RECEIVED_HEAD_LIMIT = 4 * HEAD_LIMIT
# Requests read ahead of their answers on one connection: beyond it the
# connection is not read until the answers catch up.
PIPELINE_LIMIT = 32
# How often idle and slow connections are looked for.
SWEEP_S = 1.0
# On shutdown, how long requests under way get to be answered.
SHUTDOWN_GRACE_S = 5.0

JSON_TYPE = b"application/json; charset=utf-8"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    # As sent, before percent-decoding, without the query string.
    path: str
    remote: str
    authorization: str | None
    # No body: it is counted against max_body_bytes and dropped, as no
    # answer here needs it.
    keep_alive: bool
    http_10: bool
    connection: Connection


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] | None = None
    content_type: bytes = JSON_TYPE


# What a handler returns once it has written its answer itself (an event stream).
STREAMED = None
Dispatch = Callable[[Request], Awaitable[Response | None]]


class _Clock:
    """The Date header, written once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")
        return self._line


class Server:
    """One process's listener: its connections, their deadlines, its dispatch."""

    def __init__(
        self, dispatch: Dispatch, *, max_body_bytes: int, client_timeout_s: float, idle_s: float
    ) -> None:
        self.dispatch = dispatch
        self.max_body_bytes = max_body_bytes
        self.client_timeout_s = client_timeout_s
        self.idle_s = idle_s
        self.clock = _Clock()
        self.connections: set[Connection] = set()
        # The loop keeps only weak references to tasks: answers under way are held here.
        self.answering: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, reuse_port: bool) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: Connection(self), host, port, reuse_port=reuse_port or None, backlog=4096
        )
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                connection.timed_out()

    async def close(self) -> None:
        """Stop listening, let requests under way be answered, close the rest."""
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close_when_idle()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_S
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()


class _Stop(Exception):
    """Raised inside a parser callback, after a refusal: parse nothing more
    (httptools gives it back from feed_data as HttpParserCallbackError)."""


class Connection(asyncio.Protocol):
    """One client's connection, reading requests and writing their answers in turn."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote = "?"
        self._waiting: deque[Request] = deque()
        self._serving = False
        # Serving an event stream, which has no end of its own.
        self._streaming = False
        # No more requests are read (a refusal, an Upgrade, shutdown) / the connection ends.
        self._reading_stopped = False
        self._closing = False
        self._reading_paused = False
        self._writing_paused = False
        self._writable: asyncio.Future[None] | None = None
        # A refusal written once the answers already owed are written; then the end.
        self._final: Response | None = None
        # Of the request being read.
        self._in_head = False
        self._head_bytes = 0
        self._head_received = 0
        self._url = b""
        self._authorization: bytes | None = None
        self._expects_continue = False
        self._body_bytes = 0
        # When this connection is given up if nothing happens (loop time).
        self.deadline = float("inf")

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._remote = str(peer[0])
        self._server.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = self._reading_stopped = True
        self._waiting.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the client went away"))

    def data_received(self, data: bytes) -> None:
        if self._reading_stopped:
            return
        if self._in_head:
            # The parser holds a header until it is whole: a never-ending one
            # is counted here, as it arrives, and refused at a bound.
            self._head_received += len(data)
            if self._head_received > RECEIVED_HEAD_LIMIT:
                self._refuse(_refusal(431, "request head too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered as a plain request; nothing after it is read.
            self._stop_reading()
        except httptools.HttpParserError:
            # A refusal from a callback (which raised _Stop) is already made.
            if not self._reading_stopped:
                self._refuse(_refusal(400, "malformed request"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        self._serve_next()

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = self._head_received = 0
        self._url = b""
        self._authorization = None
        self._expects_continue = False
        self._body_bytes = 0
        self.deadline = self._loop.time() + self._server.client_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        lowered = name.lower()
        if lowered == b"authorization":
            if self._authorization is None:
                self._authorization = value
        elif lowered == b"content-length":
            if value.isdigit() and int(value) > self._server.max_body_bytes:
                self._too_large()
        elif lowered == b"expect":
            self._expects_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Only when nothing is owed before it: an interim answer must not
        # overtake the answers to requests read earlier.
        if self._expects_continue and not self._serving and not self._waiting:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body_bytes:
            self._too_large()

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        if not url.startswith(b"/"):
            # The absolute form (`GET http://host/path`), which a proxy may send.
            url = httptools.parse_url(url).path or b"/"
        path = url.split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
        authorization = self._authorization
        self._waiting.append(
            Request(
                parser.get_method().decode("ascii", "replace"),
                path,
                self._remote,
                authorization.decode("latin-1") if authorization is not None else None,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                self,
            )
        )
        self.deadline = float("inf")
        if len(self._waiting) >= PIPELINE_LIMIT and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._serve_next()

    # -- answering --------------------------------------------------------

    def _serve_next(self) -> None:
        if self._serving or self._writing_paused or not self._waiting:
            return
        request = self._waiting.popleft()
        if self._reading_paused and len(self._waiting) < PIPELINE_LIMIT // 2:
            self._reading_paused = False
            if self._transport is not None and not self._reading_stopped:
                self._transport.resume_reading()
        self._serving = True
        task = self._loop.create_task(self._serve(request))
        self._server.answering.add(task)
        task.add_done_callback(self._server.answering.discard)

    async def _serve(self, request: Request) -> None:
        try:
            response = await self._server.dispatch(request)
        except Exception:
            log.exception("answering %s %s", request.method, request.path)
            response = _refusal(500, "internal error")
        keep_alive = request.keep_alive and not self._closing
        if response is not STREAMED:
            self.write_response(response, keep_alive, head_only=request.method == "HEAD")
        self._serving = self._streaming = False
        if not keep_alive:
            self._close()
        elif self._waiting:
            self._serve_next()
        elif self._final is not None:
            self._write_final()
        elif self._reading_stopped:
            self._close()
        else:
            self._idle()

    def write_response(self, response: Response, keep_alive: bool, head_only: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = response.body
        parts = [
            _STATUS_LINES.get(response.status) or b"HTTP/1.1 %d \r\n" % response.status,
            self._server.clock.date_line(),
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (response.content_type, len(body)),
        ]
        if response.headers:
            parts.append(_header_lines(response.headers))
        parts.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        if not head_only:
            parts.append(body)
        transport.write(b"".join(parts))

    def start_stream(self, request: Request, headers: dict[str, str]) -> EventStream:
        """A 200 whose body is written as it comes: chunked (to HTTP/1.0, ended by closing)."""
        chunked = not request.http_10
        head = [_STATUS_LINES[200], self._server.clock.date_line(), _header_lines(headers)]
        if chunked:
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            head.append(b"Connection: close\r\n\r\n")
            self._closing = True
        self._write(b"".join(head))
        self._streaming = True
        return EventStream(self, chunked)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(data)

    async def writable(self) -> None:
        """Back-pressure: wait while the client is not reading what was written."""
        if not self._writing_paused:
            return
        if self._writable is None:
            self._writable = self._loop.create_future()
        await self._writable

    # -- refusals and ends ------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > HEAD_LIMIT:
            self._refuse(_refusal(431, "request head too large"))
            raise _Stop

    def _too_large(self) -> None:
        limit = self._server.max_body_bytes
        self._refuse(Response(413, b'{"error":"too_large","detail":"body above %d bytes"}' % limit))
        raise _Stop

    def _refuse(self, refusal: Response) -> None:
        """Answer `refusal` after the answers already owed, then close: what
        this client sends next cannot be read in step."""
        self._stop_reading()
        if self._final is None:
            self._final = refusal
        if not self._serving and not self._waiting:
            self._write_final()

    def _write_final(self) -> None:
        if self._final is not None:
            self.write_response(self._final, keep_alive=False, head_only=False)
        self._close()

    def _stop_reading(self) -> None:
        self._reading_stopped = True
        self._in_head = False
        self.deadline = float("inf")
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _idle(self) -> None:
        self.deadline = self._loop.time() + self._server.idle_s

    def timed_out(self) -> None:
        """Nothing came in time: a request half sent is told so, an idle connection closed."""
        if self._in_head or self._body_bytes:
            self._refuse(_refusal(408, "request too slow"))
        else:
            self._close()

    def close_when_idle(self) -> None:
        self._closing = True
        self._stop_reading()
        if self._streaming:
            # A stream would hold the shutdown to its grace for nothing: its
            # reader reconnects (to another process or after the restart).
            self.abort()
        elif not self._serving and not self._waiting:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self.deadline = float("inf")
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class EventStream:
    """The body of an answer written piece by piece (server-sent events)."""

    def __init__(self, connection: Connection, chunked: bool) -> None:
        self._connection = connection
        self._chunked = chunked

    async def write(self, data: bytes) -> None:
        """Send `data`; ConnectionResetError once the client is gone."""
        self._connection._write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        await self._connection.writable()

    async def end(self) -> None:
        if self._chunked:
            self._connection._write(b"0\r\n\r\n")
            await self._connection.writable()


def _header_lines(headers: dict[str, str]) -> bytes:
    # Names and values are this module's callers' own constants and numbers,
    # never text from a request.
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")


def _refusal(status: int, detail: str) -> Response:
    error = HTTPStatus(status).phrase.lower().replace(" ", "_")
    return Response(status, b'{"error":"%s","detail":"%s"}' % (error.encode(), detail.encode()))
