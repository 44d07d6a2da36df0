"""The webhook's calls on the wire (engine/drain/webhook_wire.py) against real TCP
servers that answer with scripted bytes: how answers are framed, when a
connection is reused, and what never goes out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from intake_cli.engine.drain.webhook import DRAIN_BYTES, Verdict, WebhookClient, WebhookResult

Answerer = Callable[[int, bytes], bytes | None]  # (connection number, request) -> bytes to send


@dataclass
class Scripted:
    """A loopback server: reads one request at a time, writes what `answer` returns,
    closes the connection after it when `close_after` says so."""

    answer: Answerer
    close_after: Callable[[int], bool] = lambda n: False
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append((number, request))
                reply = self.answer(number, request)
                if reply is None:
                    await asyncio.sleep(3600)
                writer.write(reply or b"")
                await writer.drain()
                if self.close_after(number):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run_calls(
    server: Scripted,
    calls: int,
    *,
    host: str = "127.0.0.1",
    timeout_s: float = 2.0,
    keys: list[str] | None = None,
    pause_s: float = 0.0,
) -> list[WebhookResult]:
    """`calls` validations one after another through one client, each with its
    key from `keys` (fresh UUIDs when not given), `pause_s` apart."""
    chosen = keys or [str(uuid.uuid4()) for _ in range(calls)]

    async def main() -> list[WebhookResult]:
        listener = await asyncio.start_server(server.handle, host, 0)
        port = listener.sockets[0].getsockname()[1]
        authority = f"[{host}]" if ":" in host else host
        url = f"http://{authority}:{port}/validate?pool=drop"
        results = []
        async with listener, WebhookClient(timeout_s=timeout_s) as client:
            for key in chosen[:calls]:
                results.append(await client.validate(url, {"v": 1}, key))
                await asyncio.sleep(pause_s)
        return results

    return asyncio.run(main())


def respond(status: str, headers: str = "", body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}".encode() + b"\r\n" + body


OK = respond("200 OK", "Content-Length: 2\r\n", b"{}")


def test_kept_alive_connections_carry_the_next_calls() -> None:
    server = Scripted(lambda n, r: OK)
    results = run_calls(server, 5)
    assert [r.verdict for r in results] == [Verdict.VALIDATED] * 5
    assert server.connections == 1
    first = server.requests[0][1]
    assert first.startswith(b"POST /validate?pool=drop HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nUser-Agent: intake/" in first and b"\r\nContent-Type: application/json" in first


def test_a_chunked_decline_is_read_for_its_reason() -> None:
    body = b'{"reason": "card declined"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = respond(
        "402 Payment Required",
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        chunked,
    )
    server = Scripted(lambda n, r: answer)
    results = run_calls(server, 2)
    assert [(r.verdict, r.reason) for r in results] == [
        (Verdict.REJECTED, "HTTP 402: card declined")
    ] * 2
    assert server.connections == 1


def test_an_answer_without_a_length_ends_with_its_connection() -> None:
    answer = respond("409 Conflict", "Content-Type: text/plain\r\nConnection: close\r\n", b"sold")
    server = Scripted(lambda n, r: answer, close_after=lambda n: True)
    results = run_calls(server, 2)
    assert [(r.verdict, r.reason) for r in results] == [(Verdict.REJECTED, "HTTP 409: sold")] * 2
    assert server.connections == 2


def test_a_length_cut_short_is_a_retry_not_an_answer() -> None:
    answer = respond("200 OK", "Content-Length: 100\r\n", b"{}")
    server = Scripted(lambda n, r: answer, close_after=lambda n: True)
    (result,) = run_calls(server, 1)
    assert (result.verdict, result.status, result.reason) == (
        Verdict.RETRY,
        None,
        "server disconnected",
    )


def test_a_body_past_the_drain_limit_is_answered_and_its_connection_dropped() -> None:
    big = b"x" * (DRAIN_BYTES + 10)
    answers = {0: respond("503 Service Unavailable", f"Content-Length: {len(big)}\r\n", big)}
    server = Scripted(lambda n, r: answers.get(n, OK))
    first, second = run_calls(server, 2)
    assert (first.verdict, first.status) == (Verdict.RETRY, 503)
    assert second.verdict is Verdict.VALIDATED
    assert server.connections == 2


def test_an_interim_answer_is_followed_by_the_final_one() -> None:
    answer = respond("103 Early Hints", "Link: </x>\r\n") + OK
    results = run_calls(Scripted(lambda n, r: answer), 2)
    assert [(r.verdict, r.status) for r in results] == [(Verdict.VALIDATED, 200)] * 2


def test_retry_after_is_read_from_a_429() -> None:
    answer = respond("429 Too Many Requests", "Retry-After: 7\r\nContent-Length: 0\r\n")
    (result,) = run_calls(Scripted(lambda n, r: answer), 1)
    assert (result.verdict, result.retry_after_s) == (Verdict.THROTTLED, 7.0)


def test_a_malformed_answer_is_a_retry_and_its_connection_is_not_reused() -> None:
    answers = {0: b"HTTP/1.1 2OO OK\r\n\r\n"}
    server = Scripted(lambda n, r: answers.get(n, OK))
    first, second = run_calls(server, 2)
    assert (first.verdict, first.status) == (Verdict.RETRY, None)
    assert first.reason.startswith("invalid HTTP answer")
    assert second.verdict is Verdict.VALIDATED
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    # The server closes after each answer without saying so: the next call
    # must take a new connection, not fail on the dead one (the pause lets
    # the close reach the client).
    server = Scripted(lambda n, r: OK, close_after=lambda n: True)
    results = run_calls(server, 3, pause_s=0.05)
    assert [r.verdict for r in results] == [Verdict.VALIDATED] * 3
    assert server.connections == 3


def test_a_timed_out_call_leaves_no_connection_behind_for_the_next() -> None:
    answers: dict[int, bytes | None] = {0: None}  # the first connection never answers
    server = Scripted(lambda n, r: answers.get(n, OK))
    first, second = run_calls(server, 2, timeout_s=0.3)
    assert (first.verdict, first.reason) == (Verdict.RETRY, "timeout after 0.3 s")
    assert second.verdict is Verdict.VALIDATED
    assert server.connections == 2


def test_an_ipv6_webhook_gets_a_bracketed_host() -> None:
    server = Scripted(lambda n, r: OK)
    (result,) = run_calls(server, 1, host="::1")
    assert result.verdict is Verdict.VALIDATED
    assert b"\r\nHost: [::1]:" in server.requests[0][1]


def test_a_header_that_would_break_the_request_never_goes_out() -> None:
    server = Scripted(lambda n, r: OK)
    (result,) = run_calls(server, 1, keys=["key\r\nX-Injected: 1"])
    assert (result.verdict, result.status) == (Verdict.RETRY, None)
    assert result.reason == "header Idempotency-Key cannot be sent as it is"
    assert server.requests == [] and server.connections == 0


def test_urls_that_are_not_http_are_retries_with_the_url_named() -> None:
    async def main(url: str) -> WebhookResult:
        async with WebhookClient(timeout_s=1) as client:
            return await client.validate(url, {"v": 1}, "k")

    for url in ("ftp://127.0.0.1/validate", "http://", "http://exa mple.com/", "http://[::1/x"):
        result = asyncio.run(main(url))
        assert (result.verdict, result.status) == (Verdict.RETRY, None), url
        assert result.reason.startswith("invalid webhook URL"), (url, result.reason)
