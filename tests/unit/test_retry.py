import random

from intake_cli.engine.drain.retry import RetryPolicy


def test_backoff_grows_with_jitter_and_stops_at_the_cap():
    policy = RetryPolicy(base_s=1.0, cap_s=8.0, max_retries=10)
    rng = random.Random(7)
    delays = [policy.decide(n, rng).delay_s for n in range(6)]
    bounds = [(1, 1), (1, 2), (2, 4), (4, 8), (4, 8), (4, 8)]
    for delay, (low, high) in zip(delays, bounds, strict=True):
        assert low <= delay <= high
    spread = {policy.decide(3, random.Random(seed)).delay_s for seed in range(50)}
    assert len(spread) > 1  # jitter


def test_dead_after_max_retries():
    policy = RetryPolicy(max_retries=3)
    assert [policy.decide(n).dead for n in range(5)] == [False, False, False, True, True]
    assert policy.decide(3).attempts == 4
    assert RetryPolicy(max_retries=0).decide(0).dead
