"""The validation webhook: ask the payment side whether an intent may be committed.

Every outcome of a call is a `WebhookResult`, never an exception: the drain
worker only needs to know whether to commit, release the unit, or try again
later, and why. Anything that is not a definite answer (a timeout, a refused
connection, a 5xx, a 401 from a misconfigured secret) is RETRY, because losing
an intent is worse than asking twice; the idempotency key makes asking twice
safe for the webhook.

Requests are signed the way Standard Webhooks specifies when a secret is
configured. The calls go out through webhook_wire (llhttp's parser under a
small connection pool), which spends half of aiohttp's CPU per call (see
benchmarks/http_clients.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from intake_cli import __version__
from intake_cli.engine.drain.webhook_wire import CallFailed, WirePool, request_bytes
from intake_cli.platform.jsontext import dump_ascii
from intake_cli.platform.signing import sign

DECLINE_STATUSES = frozenset({400, 402, 409, 422})

# Enough of a response body to explain a decline; more is never kept.
REASON_BYTES = 2048
# A larger body is not drained: the connection is dropped instead of reused.
DRAIN_BYTES = 64 * 1024
REASON_CHARS = 200
USER_AGENT = f"intake/{__version__}"


class Verdict(enum.Enum):
    VALIDATED = "validated"
    REJECTED = "rejected"
    RETRY = "retry"
    # "Not now" (429, or 503 with Retry-After): the provider meters its
    # callers. Not a failure of this payment: the intent is asked again later
    # without being charged an attempt.
    THROTTLED = "throttled"


@dataclass(frozen=True)
class WebhookResult:
    verdict: Verdict
    status: int | None  # None when no response arrived
    reason: str
    elapsed_s: float
    # Seconds the provider asked callers to wait (Retry-After), when it did.
    retry_after_s: float | None = None


# A Retry-After longer than this is taken as this: an hour's pause is already
# an outage an operator sees; a year's is a provider's bug.
MAX_RETRY_AFTER_S = 3600.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP-date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, wait), MAX_RETRY_AFTER_S)


def classify(status: int, retry_after_s: float | None = None) -> Verdict:
    """2xx validates, a definite decline rejects, 429 (or a 503 that says when
    to come back) throttles, anything else is retried.

    401, 403 and 404 are retried on purpose: they mean the webhook or its
    secret is misconfigured, which an operator can fix without losing intents.
    """
    if 200 <= status < 300:
        return Verdict.VALIDATED
    if status in DECLINE_STATUSES:
        return Verdict.REJECTED
    if status == 429 or (status == 503 and retry_after_s is not None):
        return Verdict.THROTTLED
    return Verdict.RETRY


def _body_reason(body: bytes, content_type: str) -> str:
    """The webhook's own words for its answer, if it gave any in a form we can read."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ""
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return ""
        return _short(_json_reason(data))
    if content_type.startswith("text/plain"):
        return _short(text)
    # HTML error pages from proxies say nothing an operator needs in one line.
    return ""


def _json_reason(data: Any, depth: int = 0) -> str:
    if not isinstance(data, dict):
        return ""
    for field in ("reason", "error", "message"):
        value = data.get(field)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        # Some providers nest it: {"error": {"message": "card declined"}}.
        if isinstance(value, dict) and depth == 0:
            nested = _json_reason(value, depth + 1)
            if nested:
                return nested
    return ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _connection_reason(exc: OSError, host: str, port: int) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    detail = exc.strerror or str(exc) or type(exc).__name__
    return _short(f"cannot connect to {host}:{port}: {detail}")


class WebhookClient:
    """One pool of kept-alive connections for all webhook calls of a worker.

    The pool lives between `async with` entry and exit; `validate` may be
    called concurrently from many tasks.
    """

    def __init__(self, *, timeout_s: float = 10.0, max_connections: int = 256) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._pool: WirePool | None = None
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> WebhookClient:
        self._pool = WirePool(keep_bytes=REASON_BYTES, drain_bytes=DRAIN_BYTES)
        # The timeout is the webhook's, so a call waits for a free connection
        # here, before its clock starts.
        self._slots = asyncio.Semaphore(self.max_connections)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self._slots = None

    async def validate(
        self,
        url: str,
        payload: dict[str, Any],
        idempotency_key: str,
        secret: str | None = None,
    ) -> WebhookResult:
        """POST the intent to `url` and say what the answer means for it."""
        pool, slots = self._pool, self._slots
        if pool is None or slots is None:
            raise RuntimeError("WebhookClient.validate called outside `async with`")
        body = dump_ascii({**payload, "idempotency_key": idempotency_key})
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        }
        async with slots:
            started = time.perf_counter()
            if secret is not None:
                # Stamped once a connection is free, so a long queue cannot
                # push the timestamp out of the receiver's tolerance.
                timestamp = int(time.time())
                try:
                    signature = sign(secret, idempotency_key, timestamp, body)
                except ValueError:
                    # Fixable by the operator: keep the intent rather than crash the worker.
                    reason = "invalid webhook secret: whsec_ part is not base64"
                    return WebhookResult(Verdict.RETRY, None, reason, 0.0)
                headers["webhook-id"] = idempotency_key
                headers["webhook-timestamp"] = str(timestamp)
                headers["webhook-signature"] = signature
            return await self._post(pool, url, body, headers, started)

    async def _post(
        self,
        pool: WirePool,
        url: str,
        body: bytes,
        headers: dict[str, str],
        started: float,
    ) -> WebhookResult:
        def retry(reason: str) -> WebhookResult:
            return WebhookResult(Verdict.RETRY, None, reason, time.perf_counter() - started)

        try:
            target = pool.target(url)
            request = request_bytes(target, headers, body)
            async with asyncio.timeout(self.timeout_s):
                answer = await pool.post(target, request)
        except TimeoutError:
            return retry(f"timeout after {self.timeout_s:g} s")
        except CallFailed as exc:
            return retry(_short(str(exc)))
        except OSError as exc:
            return retry(_connection_reason(exc, target.host, target.port))
        elapsed = time.perf_counter() - started
        status = answer.status
        wait_s = retry_after(answer.headers.get(b"retry-after")) if status >= 400 else None
        # A yes needs no words: its body is read (so the connection is reused)
        # but not parsed, which the worker would pay for on every intent.
        if 200 <= status < 300:
            said = ""
        else:
            said = _body_reason(answer.head, answer.headers.get(b"content-type", "").lower())
        reason = f"HTTP {status}: {said}" if said else f"HTTP {status}"
        return WebhookResult(classify(status, wait_s), status, reason, elapsed, wait_s)
