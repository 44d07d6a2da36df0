"""Per-key request rates: token buckets held in this process.

In-process on purpose: a DB1 round trip per request to share buckets across
workers would cost more than the claims it protects. With N workers behind
SO_REUSEPORT a client may get up to N times the rate at worst; the kernel
spreads one client's connections over the workers, so in practice it is
close to the configured one.
"""

from __future__ import annotations

import math
import time

# Beyond this many keys, full (idle) buckets are dropped: a flood of distinct
# addresses cannot grow the table without bound.
MAX_KEYS = 200_000


class TokenBuckets:
    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 when the request may go ahead; else the seconds until a token is there."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > MAX_KEYS:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self._rate

    def _prune(self, now: float) -> None:
        full = [
            key
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._rate >= self._burst
        ]
        for key in full:
            del self._buckets[key]


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
