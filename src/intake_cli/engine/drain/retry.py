"""When a failed intent is tried again, and when it goes to the dead-letter queue.

Written by hand rather than with tenacity's wait strategies: the retry is not
a loop in this process. The delay becomes the message's visibility timeout
in pgmq (set_vt), so any worker on any machine picks the intent up again,
and the attempt count lives in DB1 beside the intent's state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryDecision:
    attempts: int
    dead: bool
    delay_s: int


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 60.0
    max_retries: int = 10

    def decide(self, failures_before: int, rng: random.Random | None = None) -> RetryDecision:
        """What to do after one more failure of an intent that failed `failures_before` times."""
        attempts = failures_before + 1
        if attempts > self.max_retries:
            return RetryDecision(attempts, dead=True, delay_s=0)
        # Exponential backoff with "equal jitter": at least half the step, so
        # a burst of failures spreads out without retrying almost at once.
        step = min(self.cap_s, self.base_s * 2 ** (attempts - 1))
        delay = step / 2 + (rng or random).uniform(0, step / 2)
        # set_vt takes whole seconds on every pgmq version the engine supports.
        return RetryDecision(attempts, dead=False, delay_s=max(1, math.ceil(delay)))
