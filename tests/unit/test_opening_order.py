"""A fair opening's admission order (opening.order): a uniformly random shuffle of
the waiting room, the same for the same seed.

The gateway's acceptance test (tests/acceptance/test_gateway_opening.py) checks
that a real opening admits its room in exactly opening.order's order for the
seed DB1 stored; how random that order is, is checked here, over a room of
10,000 buyers, where it costs no gateway.
"""

from __future__ import annotations

import random

import pytest

from intake_cli.engine import opening

ROOM = 10_000


def spearman(xs: list[int], ys: list[int]) -> float:
    """Spearman's rank correlation of two orders of the same distinct values."""
    n = len(xs)
    rank_x = {v: i for i, v in enumerate(sorted(xs))}
    rank_y = {v: i for i, v in enumerate(sorted(ys))}
    d2 = sum((rank_x[x] - rank_y[y]) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


# Seeds as the opener draws them (secrets.randbits(62)), fixed so that the
# bound below is checked, not sampled.
@pytest.mark.parametrize("seed", [random.Random(n).getrandbits(62) for n in range(3)])
def test_the_admission_order_is_a_shuffle_uncorrelated_with_arrival(seed: int) -> None:
    arrivals = [f"buyer-{n}" for n in range(ROOM)]
    admitted = opening.order(arrivals, seed)
    assert sorted(admitted) == sorted(arrivals)
    position = {user: n for n, user in enumerate(admitted)}
    # Five standard deviations of rho for 10,000 buyers: 0.05.
    assert abs(spearman(list(range(ROOM)), [position[u] for u in arrivals])) < 0.05
    # The auditor's replay: the same seed gives the same order.
    assert opening.order(arrivals, seed) == admitted
    assert opening.order(arrivals, seed + 1) != admitted
