"""`intake gateway` limits: a flood from one address gets 429, everyone else is served."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest

from tests.acceptance.gateway_support import provision, running_gateway, token

pytestmark = pytest.mark.timeout(120)

LIMITS = {
    "per_ip_rate": 5,
    "per_ip_burst": 10,
    "per_buyer_rate": 1,
    "per_buyer_burst": 2,
    "max_body_bytes": 1024,
}


async def _post(url: str, buyers: list[str], source: str) -> list[tuple[int, str | None]]:
    # Each address is its own client: the loopback network answers on all of 127/8.
    connector = aiohttp.TCPConnector(limit=0, local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(buyer: str) -> tuple[int, str | None]:
            headers = {"Authorization": f"Bearer {token(buyer)}"}
            async with session.post(url, headers=headers) as response:
                await response.read()
                return response.status, response.headers.get("Retry-After")

        return await asyncio.gather(*(one(b) for b in buyers))


async def _flood_and_others(url: str) -> tuple[list, list]:
    flood = _post(url, [str(uuid.uuid4()) for _ in range(300)], "127.0.0.1")
    others = asyncio.gather(
        *(_post(url, [str(uuid.uuid4())], f"127.0.0.{n}") for n in range(2, 22))
    )
    flooded, served = await asyncio.gather(flood, others)
    return flooded, [answer for batch in served for answer in batch]


async def _from_many(url: str, buyer: str) -> list:
    return await asyncio.gather(*(_post(url, [buyer], f"127.0.1.{n}") for n in range(1, 9)))


def test_flood_from_one_address_is_limited_while_others_claim(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    config = provision(workdir, db1_dsn, db2_dsn, 1000, LIMITS)
    with running_gateway(config, db1_dsn, db2_dsn) as gw:
        flooded, served = asyncio.run(_flood_and_others(gw.claim_url()))
        # One buyer, many addresses: the buyer's own rate applies.
        buyer = str(uuid.uuid4())
        same_buyer = asyncio.run(_from_many(gw.claim_url(), buyer))
        # From an address of its own: 127.0.0.1's bucket is empty after the flood.
        fresh = httpx.HTTPTransport(local_address="127.0.2.1")
        with httpx.Client(transport=fresh) as client:
            too_big = client.post(
                gw.claim_url(),
                headers={"Authorization": f"Bearer {token()}"},
                content=b"x" * 4096,
            )
    statuses = [status for status, _ in flooded]
    # The burst of 10 (plus what refilled meanwhile) went through, the rest waited.
    assert 10 <= statuses.count(200) < 300
    assert statuses.count(429) == 300 - statuses.count(200)
    assert all(int(after) >= 1 for status, after in flooded if status == 429)
    assert [status for status, _ in served] == [200] * 20
    buyer_statuses = sorted(status for batch in same_buyer for status, _ in batch)
    assert buyer_statuses.count(200) >= 2 and 429 in buyer_statuses
    assert too_big.status_code == 413
    with psycopg.connect(db1_dsn) as conn:
        locked = conn.execute(
            "select count(*) from intake.allocations where status = 'locked'"
        ).fetchone()[0]
    # Every 200 is a unit held: the flood's, the others' and the one buyer's.
    assert locked == statuses.count(200) + 20 + 1
