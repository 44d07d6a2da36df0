"""`intake gateway` fair opening: early buyers admitted in a replayable random order."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
import pytest
import yaml

from intake_cli.engine import opening
from tests.acceptance.gateway_support import provision, running_gateway, token

pytestmark = pytest.mark.timeout(240)

OPEN = {"per_ip_rate": 1_000_000, "per_ip_burst": 1_000_000}
EARLY, LATE = 10_000, 200


async def _post_all(url: str, buyers: list[str], connections: int) -> list[tuple[int, dict]]:
    connector = aiohttp.TCPConnector(limit=connections)
    tokens = {b: token(b) for b in buyers}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(buyer: str) -> tuple[int, dict]:
            headers = {"Authorization": f"Bearer {tokens[buyer]}"}
            async with session.post(url, headers=headers) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(b) for b in buyers))


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _spearman(xs: list[int], ys: list[int]) -> float:
    n = len(xs)
    rank_x = {v: i for i, v in enumerate(sorted(xs))}
    rank_y = {v: i for i, v in enumerate(sorted(ys))}
    d2 = sum((rank_x[x] - rank_y[y]) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


def test_fair_opening_shuffles_the_early_crowd_ahead_of_later_arrivals(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    # The waiting room is in DB1: the crowd arrives at one gateway whose
    # opening is an hour away; a restarted gateway, told the opening is now,
    # admits them. No race with the clock either way.
    config = provision(
        workdir, db1_dsn, db2_dsn, EARLY + LATE, OPEN, opens_at=_instant(time.time() + 3600)
    )
    early = [str(uuid.uuid4()) for _ in range(EARLY)]
    late = [str(uuid.uuid4()) for _ in range(LATE)]
    with running_gateway(config, db1_dsn, db2_dsn, "--workers", "2") as gw:
        waiting = asyncio.run(_post_all(gw.claim_url(), early, 64))
        assert {status for status, _ in waiting} == {202}
        assert {body["outcome"] for _, body in waiting} == {"waiting"}
        # Asking again keeps one's receipt: no second place in the room.
        again = asyncio.run(_post_all(gw.claim_url(), early[:5], 5))
        assert [b["receipt"] for _, b in again] == [b["receipt"] for _, b in waiting[:5]]
    opens_at = time.time() + 3
    data = yaml.safe_load(config.read_text())
    data["pools"][0]["opens_at"] = _instant(opens_at)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with running_gateway(config, db1_dsn, db2_dsn, "--workers", "2") as gw:
        time.sleep(max(0.0, opens_at - time.time()) + 0.2)
        answered = asyncio.run(_post_all(gw.claim_url(), late, 20))
        assert {body["outcome"] for _, body in answered} == {"claimed"}

    with psycopg.connect(db1_dsn) as conn:
        rows = conn.execute(
            "select w.user_id, w.arrival_no, w.admitted_no, w.outcome, a.unit_no"
            " from intake.waiting_room w join intake.allocations a"
            " on a.pool_id = w.pool_id and a.locked_by = w.user_id order by w.arrival_no"
        ).fetchall()
        seed, count, completed = conn.execute(
            "select seed, waiting, completed_at from intake.openings where pool_id = 'drop'"
        ).fetchone()
        late_units = [
            unit
            for (unit,) in conn.execute(
                "select unit_no from intake.allocations where locked_by = any(%s)", (late,)
            ).fetchall()
        ]
    assert count == EARLY and completed is not None and len(rows) == EARLY
    assert {outcome for *_, outcome, _ in rows} == {"claimed"}
    arrival = [r[1] for r in rows]
    admitted = [r[2] for r in rows]
    assert sorted(admitted) == list(range(EARLY))
    assert abs(_spearman(arrival, admitted)) < 0.05
    # Units were taken in admission order, every early buyer's before any late one's.
    by_admission = sorted(rows, key=lambda r: r[2])
    units = [r[4] for r in by_admission]
    assert units == sorted(units)
    assert max(units) < min(late_units)
    # The auditor's replay: the stored seed over the arrival order gives the admission order.
    assert opening.order([r[0] for r in rows], seed) == [r[0] for r in by_admission]
