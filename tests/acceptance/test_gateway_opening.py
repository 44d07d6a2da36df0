"""`intake gateway` fair opening: early buyers admitted in a replayable random order."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest
import yaml

from intake_cli.engine import opening
from intake_cli.platform.embedded import Cluster
from tests.acceptance.gateway_support import provision, running_gateway, token
from tests.conftest import drop_database, intake, new_database
from tests.unit.test_opening_order import spearman

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

OPEN = {"per_ip_rate": 1_000_000, "per_ip_burst": 1_000_000}
# 2,000 early buyers: the admission order is checked to be exactly the stored
# seed's shuffle of the arrival order, whatever the room's size; how random
# that shuffle is, is opening.order's (tests/unit/test_gateway_parts.py bounds
# it over 10,000 buyers).
EARLY, LATE = 2_000, 200
# Buyers sent across the opening instant.
CROSSING = 4000


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
        # The instant as the configuration wrote it (ISO 8601), not epoch seconds.
        assert datetime.fromisoformat(waiting[0][1]["opens_at"]) == datetime.fromisoformat(
            yaml.safe_load(config.read_text())["pools"][0]["opens_at"]
        )
        # A buyer with a receipt who asks where they stand is told they wait in the room.
        headers = {"Authorization": f"Bearer {token(early[0])}"}
        stands = httpx.get(gw.claim_url(), headers=headers, timeout=10)
        assert stands.status_code == 200
        assert stands.json()["state"] == "waiting"
        assert stands.json()["receipt"] == waiting[0][1]["receipt"]
        stranger = httpx.get(gw.claim_url(), headers={"Authorization": f"Bearer {token()}"})
        assert (stranger.status_code, stranger.json()["state"]) == (404, "none")
    opens_at = time.time() + 3
    data = yaml.safe_load(config.read_text())
    data["pools"][0]["opens_at"] = _instant(opens_at)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    intake("up", config=config, check=True)
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
    # Four standard deviations of rho for a room this size (0.09): arrival
    # order, or anything near it, is far outside.
    assert abs(spearman(arrival, admitted)) < 4 / (EARLY - 1) ** 0.5
    # Units were taken in admission order, every early buyer's before any late one's.
    by_admission = sorted(rows, key=lambda r: r[2])
    units = [r[4] for r in by_admission]
    assert units == sorted(units)
    assert max(units) < min(late_units)
    # The auditor's replay: the stored seed over the arrival order gives the admission order.
    assert opening.order([r[0] for r in rows], seed) == [r[0] for r in by_admission]


async def _post_paced(
    url: str, buyers: list[str], first_at: float, last_at: float
) -> list[tuple[int, dict]]:
    """Each buyer's claim sent at its own instant, evenly from first_at to last_at."""
    connector = aiohttp.TCPConnector(limit=400)
    headers = {b: {"Authorization": f"Bearer {token(b)}"} for b in buyers}
    step = (last_at - first_at) / max(1, len(buyers) - 1)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int, buyer: str) -> tuple[int, dict]:
            await asyncio.sleep(max(0.0, first_at + n * step - time.time()))
            async with session.post(url, headers=headers[buyer]) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(n, b) for n, b in enumerate(buyers)))


# Serial: the crowd must reach DB1 across the opening's instant, so a lag of
# the gateways behind the wall clock decides the case. In the parallel pass of
# a loaded CI run every early buyer's join once arrived after the room closed
# (0 receipts); alone it passes.
@pytest.mark.serial
def test_every_receipt_given_across_the_opening_instant_is_admitted(
    workdir: Path, cluster: Cluster, template_db: str, db2_cluster: Cluster
) -> None:
    """Buyers arrive from 0.4 s before to 0.4 s after opens_at at two gateway
    processes: every 202 receipt is admitted exactly once, no later arrival is
    served before any buyer of the room, and the stored record replays."""
    buyers = [str(uuid.uuid4()) for _ in range(CROSSING)]
    # The opening is set before the gateways start (they read it then), far
    # enough ahead for them to answer first. On a machine so loaded that they
    # were not up 1 s before it, or lagged so far behind the crowd that it did
    # not reach DB1 across the instant (some buyers in the room, some after
    # it: under a load average of 7 only 17 early joins were in time, and once
    # beside the serial pass's neighbour none was), the case was not tried:
    # again, on fresh databases, with more time.
    for lead_s in (10, 15, 30):
        db1_dsn, db2_dsn = new_database(cluster, template_db), new_database(db2_cluster)
        opens_at = time.time() + lead_s
        config = provision(
            workdir,
            db1_dsn,
            db2_dsn,
            10_000,
            OPEN,
            opens_at=_instant(opens_at),
            admit_per_second=1000,
        )
        answered: list[tuple[int, dict]] = []
        with running_gateway(config, db1_dsn, db2_dsn, "--workers", "2") as gw:
            if time.time() < opens_at - 1:
                answered = asyncio.run(
                    _post_paced(gw.claim_url(), buyers, opens_at - 0.4, opens_at + 0.4)
                )
        # Whatever the timing, every buyer got a receipt or a unit.
        assert {status for status, _ in answered} <= {200, 202}
        assert {body["outcome"] for status, body in answered if status == 200} <= {"claimed"}
        receipts = {
            b: body["receipt"]
            for b, (status, body) in zip(buyers, answered, strict=False)
            if status == 202
        }
        served = {b for b, (status, _) in zip(buyers, answered, strict=False) if status == 200}
        if len(receipts) >= 5 and len(served) >= 5:
            break
        drop_database(cluster, db1_dsn)
        drop_database(db2_cluster, db2_dsn)
    else:
        raise AssertionError("the crowd never reached DB1 across the opening instant")
    assert len(answered) == len(buyers) and len(receipts) + len(served) == len(buyers)

    with psycopg.connect(db1_dsn) as conn:
        room = conn.execute(
            "select user_id, receipt::text, arrival_no, admitted_no, outcome, unit_no"
            " from intake.waiting_room where pool_id = 'drop' order by arrival_no"
        ).fetchall()
        (waiting,) = conn.execute(
            "select waiting from intake.openings where pool_id = 'drop'"
        ).fetchone()
        late_units = [
            unit
            for (unit,) in conn.execute(
                "select unit_no from intake.allocations where locked_by = any(%s)",
                (sorted(served),),
            ).fetchall()
        ]
    # Every receipt is in the room and was admitted with a unit, exactly once.
    in_room = {user: rest for user, *rest in room}
    assert {b: in_room[b][0] for b in receipts if b in in_room} == receipts
    unadmitted = [b for b in receipts if in_room[b][2] is None]
    assert unadmitted == []
    assert {in_room[b][3] for b in receipts} == {"claimed"}
    assert set(in_room) == set(receipts) and waiting == len(receipts)
    assert sorted(r[3] for r in room) == list(range(len(room)))
    # Nobody who came after the room closed was served before anyone in it.
    assert len(late_units) == len(served)
    assert max(r[5] for r in room) < min(late_units)
    # The auditor's replay, from DB1 alone.
    verified = intake("opening", "verify", "drop", "--json", config=config)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Shuffled, not served in arrival order: four standard deviations of rho
    # for a room this size (the unit test of opening.order bounds it tightly).
    arrival = [r[2] for r in room]
    assert abs(spearman(arrival, [r[3] for r in room])) < 4 / (len(room) - 1) ** 0.5
