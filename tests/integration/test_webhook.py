"""WebhookClient against the scriptable test webhook, a real server in another process."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from intake_cli.engine.drain.webhook import Verdict, WebhookClient, WebhookResult
from intake_cli.tools.testhook import declines
from intake_cli.tools.webhook_process import WebhookServer

SECRET = "whsec_" + base64.b64encode(b"integration-secret").decode()


@pytest.fixture(scope="module")
def shared() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def webhook(shared: WebhookServer) -> WebhookServer:
    """The module's server with its default behaviour and no calls recorded
    (the rate limit too: a test that failed before lifting it would throttle
    every test after it)."""
    shared.script(decline_share=0.0, fail_first=0, fail_status=503, delay_ms=0, rate_limit=0)
    shared.reset()
    return shared


def new_key() -> str:
    return str(uuid.uuid4())


def payload(key: str, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "pool_id": "drop", "user_id": "u-1", "unit_no": 7, **extra}


def validate_all(
    url: str,
    keys: list[str],
    *,
    secret: str | None = None,
    timeout_s: float = 5.0,
    max_connections: int = 256,
) -> list[WebhookResult]:
    async def run() -> list[WebhookResult]:
        async with WebhookClient(timeout_s=timeout_s, max_connections=max_connections) as client:
            return list(
                await asyncio.gather(
                    *(client.validate(url, payload(key), key, secret) for key in keys)
                )
            )

    return asyncio.run(run())


def validate(url: str, key: str, **options: Any) -> WebhookResult:
    return validate_all(url, [key], **options)[0]


def test_approval_is_validated(webhook: WebhookServer) -> None:
    key = new_key()
    result = validate(webhook.url, key)
    assert result.verdict is Verdict.VALIDATED
    assert (result.status, result.reason) == (200, "HTTP 200")
    assert 0 < result.elapsed_s < 5
    [call] = webhook.calls()["calls"]
    assert (call["key"], call["path"], call["status"]) == (key, "/validate", 200)
    assert call["signature_ok"] is None  # the server has no secret to check with


def test_decline_is_rejected_with_the_webhooks_reason(webhook: WebhookServer) -> None:
    webhook.script(decline_share=1.0)
    result = validate(webhook.url, new_key())
    assert result.verdict is Verdict.REJECTED
    assert (result.status, result.reason) == (402, "HTTP 402: card declined")


def test_transient_failures_are_retried_then_validated(webhook: WebhookServer) -> None:
    webhook.script(fail_first=2)
    key = new_key()
    results = [validate(webhook.url, key) for _ in range(3)]
    assert [r.verdict for r in results] == [Verdict.RETRY, Verdict.RETRY, Verdict.VALIDATED]
    assert [r.status for r in results] == [503, 503, 200]
    assert results[0].reason == "HTTP 503"
    assert webhook.per_key() == {key: 3}


def test_429_throttles_and_misconfiguration_statuses_are_retried(webhook: WebhookServer) -> None:
    webhook.script(rate_limit=1, retry_after="seconds")
    first, second = validate(webhook.url, new_key()), validate(webhook.url, new_key())
    assert (first.verdict, second.verdict) == (Verdict.VALIDATED, Verdict.THROTTLED)
    assert second.status == 429 and second.retry_after_s == 1.0
    webhook.script(rate_limit=0, fail_first=1, fail_status=503)
    # A 503 without Retry-After is a failure; with one, the provider meters us.
    assert validate(webhook.url, new_key()).verdict is Verdict.RETRY
    # A wrong path answers 404: the intent must wait for the fix, not be declined.
    wrong = validate(f"{webhook.base_url}/_control/validate", new_key())
    assert wrong.verdict is Verdict.RETRY
    assert wrong.reason == "HTTP 404: no control endpoint POST /_control/validate"


def test_a_scripted_422_is_a_decline(webhook: WebhookServer) -> None:
    webhook.script(fail_first=1, fail_status=422)
    key = new_key()
    first, second = validate(webhook.url, key), validate(webhook.url, key)
    assert (first.verdict, first.status) == (Verdict.REJECTED, 422)
    assert (second.verdict, second.status) == (Verdict.VALIDATED, 200)


@pytest.mark.serial
def test_a_slow_webhook_times_out_into_a_retry(webhook: WebhookServer) -> None:
    webhook.script(delay_ms=2000)
    started = time.monotonic()
    result = validate(webhook.url, new_key(), timeout_s=0.3)
    assert result.verdict is Verdict.RETRY
    assert result.status is None
    assert result.reason == "timeout after 0.3 s"
    assert 0.25 < result.elapsed_s < 1.5
    assert time.monotonic() - started < 1.5


def test_waiting_for_a_free_connection_does_not_count_against_the_timeout(
    webhook: WebhookServer,
) -> None:
    # Eight 300 ms answers through two connections take 1.2 s, each well under 1 s.
    webhook.script(delay_ms=300)
    keys = [new_key() for _ in range(8)]
    started = time.monotonic()
    results = validate_all(webhook.url, keys, timeout_s=1.0, max_connections=2)
    assert time.monotonic() - started > 1.15
    assert {r.verdict for r in results} == {Verdict.VALIDATED}


def test_idempotency_key_header_and_body_agree(webhook: WebhookServer) -> None:
    key = new_key()
    asyncio.run(_validate_with_stale_body_key(webhook.url, key))
    calls = webhook.calls()["calls"]
    assert len(calls) == 2
    for call in calls:
        assert call["key"] == key
        assert call["body_idempotency_key"] == key


async def _validate_with_stale_body_key(url: str, key: str) -> None:
    async with WebhookClient() as client:
        await client.validate(url, payload(key), key)
        # The key argument wins over a different one already in the payload.
        stale = payload(key, idempotency_key="not-the-key")
        result = await client.validate(url, stale, key)
        assert result.verdict is Verdict.VALIDATED
        assert stale["idempotency_key"] == "not-the-key"  # the caller's dict is left alone


def test_decline_is_stable_per_key(webhook: WebhookServer) -> None:
    webhook.script(decline_share=0.5)
    keys = [new_key() for _ in range(60)]
    first = validate_all(webhook.url, keys)
    second = validate_all(webhook.url, keys)
    verdicts = [r.verdict for r in first]
    assert verdicts == [r.verdict for r in second]
    assert set(verdicts) == {Verdict.VALIDATED, Verdict.REJECTED}
    assert verdicts == [
        Verdict.REJECTED if declines(key, 0.5) else Verdict.VALIDATED for key in keys
    ]
    assert webhook.per_key() == {key: 2 for key in keys}


def test_500_concurrent_validations_complete(webhook: WebhookServer) -> None:
    keys = [new_key() for _ in range(500)]
    results = validate_all(webhook.url, keys, max_connections=64)
    assert [r.verdict for r in results] == [Verdict.VALIDATED] * 500
    assert webhook.per_key() == {key: 1 for key in keys}


def test_a_bad_url_is_a_retry_not_an_exception(webhook: WebhookServer) -> None:
    for url in ("not a url", "ftp://127.0.0.1/validate", "http://"):
        result = validate(url, new_key())
        assert result.verdict is Verdict.RETRY
        assert result.status is None and result.reason


def test_a_malformed_secret_is_a_retry_not_an_exception(webhook: WebhookServer) -> None:
    result = validate(webhook.url, new_key(), secret="whsec_not base64!")
    assert (result.verdict, result.status) == (Verdict.RETRY, None)
    assert "invalid webhook secret" in result.reason
    assert webhook.calls()["total"] == 0  # nothing unsigned went out


def test_validate_needs_the_session_open() -> None:
    client = WebhookClient()
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(client.validate("http://127.0.0.1:9/", {}, new_key()))


def test_webhook_down_then_back() -> None:
    with WebhookServer() as server:
        before, during, after = new_key(), new_key(), new_key()
        assert validate(server.url, before).verdict is Verdict.VALIDATED
        port = server.port
        server.stop()

        down = validate(server.url, during)
        assert down.verdict is Verdict.RETRY
        assert down.status is None
        assert down.reason == "connection refused"

        server.start()
        assert server.port == port
        assert validate(server.url, during).verdict is Verdict.VALIDATED
        assert validate(server.url, after).verdict is Verdict.VALIDATED
        assert server.per_key() == {before: 1, during: 1, after: 1}


def test_a_stop_drops_pooled_connections_without_losing_a_call() -> None:
    # The same client across the restart: its kept-alive connections die with
    # the server, and a call on one of them must come back as a retry.
    with WebhookServer() as server:

        async def run() -> list[WebhookResult]:
            async with WebhookClient(timeout_s=5) as client:
                first = await client.validate(server.url, payload("a"), "a")
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start)
                second = await client.validate(server.url, payload("b"), "b")
                third = await client.validate(server.url, payload("b"), "b")
                return [first, second, third]

        first, second, third = asyncio.run(run())
        assert first.verdict is Verdict.VALIDATED
        assert second.verdict in (Verdict.VALIDATED, Verdict.RETRY)
        assert third.verdict is Verdict.VALIDATED
        expected_b = 2 if second.verdict is Verdict.VALIDATED else 1
        assert server.per_key() == {"a": 1, "b": expected_b}


@pytest.fixture(scope="module")
def signed() -> Iterator[WebhookServer]:
    with WebhookServer(secret=SECRET) as server:
        yield server


def test_signatures_are_verified_by_the_server(signed: WebhookServer) -> None:
    signed.reset()
    key = new_key()
    result = validate(signed.url, key, secret=SECRET)
    assert (result.verdict, result.status) == (Verdict.VALIDATED, 200)
    [call] = signed.calls()["calls"]
    assert call["signature_ok"] is True


def test_a_wrong_or_missing_signature_gets_401_and_is_retried(signed: WebhookServer) -> None:
    signed.reset()
    wrong_secret = "whsec_" + base64.b64encode(b"someone-else").decode()
    wrong = validate(signed.url, new_key(), secret=wrong_secret)
    unsigned = validate(signed.url, new_key())
    for result in (wrong, unsigned):
        assert (result.verdict, result.status) == (Verdict.RETRY, 401)
        assert result.reason == "HTTP 401: bad signature"
    assert [call["signature_ok"] for call in signed.calls()["calls"]] == [False, False]


def test_many_signed_calls_all_verify(signed: WebhookServer) -> None:
    signed.reset()
    keys = [new_key() for _ in range(200)]
    results = validate_all(signed.url, keys, secret=SECRET)
    assert {r.verdict for r in results} == {Verdict.VALIDATED}
    assert {call["signature_ok"] for call in signed.calls()["calls"]} == {True}
