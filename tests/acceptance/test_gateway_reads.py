"""`intake gateway` reads: my claim and its events, from the per-process snapshot."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, drain_all
from tests.acceptance.gateway_support import provision, running_gateway, token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

OPEN = {
    "per_ip_rate": 1_000_000,
    "per_ip_burst": 1_000_000,
    "per_buyer_rate": 1000,
    "per_buyer_burst": 1000,
}
ORDER = ["queued", "validated", "committed"]


async def _events(url: str, buyer: str) -> list[dict]:
    """Read one buyer's event stream until the server closes it."""
    events = []
    headers = {"Authorization": f"Bearer {token(buyer)}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        data = None
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                events.append(data)
                data = None
    return events


# One client for the module's requests (the gateway sets no cookies): httpx.get
# builds a client, TLS context and all, per call, and the test asks 200 times.
_HTTP = httpx.Client(timeout=10)


def _get(url: str, buyer: str) -> httpx.Response:
    return _HTTP.get(url, headers={"Authorization": f"Bearer {token(buyer)}"})


def test_my_claim_position_and_events_until_committed(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    buyers = [str(uuid.uuid4()) for _ in range(20)]
    stranger = str(uuid.uuid4())
    with WebhookServer(delay_ms=20) as webhook:
        config = provision(
            workdir, db1_dsn, db2_dsn, 30, OPEN, validation_webhook_url=webhook.url, batch_size=2
        )
        event = Event(config, db1_dsn, db2_dsn, "drop")
        with running_gateway(config, db1_dsn, db2_dsn) as gw:
            for buyer in buyers:
                claimed = _HTTP.post(
                    gw.claim_url(), headers={"Authorization": f"Bearer {token(buyer)}"}
                )
                assert claimed.json()["outcome"] == "claimed"
            with psycopg.connect(db1_dsn) as conn:
                keys = dict(
                    conn.execute(
                        "select locked_by, idempotency_key::text from intake.allocations"
                        " where status = 'locked'"
                    ).fetchall()
                )
            # Before the drain: everyone queued, in line by claim order.
            mine = _get(gw.claim_url(), buyers[5])
            assert mine.status_code == 200
            body = mine.json()
            assert (body["state"], body["position"]) == ("queued", 5)
            assert body["idempotency_key"] == keys[buyers[5]]
            assert body["refresh_after_seconds"] >= 1
            # Someone with no claim learns nothing of anyone else's.
            other = _get(gw.claim_url(), stranger)
            assert (other.status_code, other.json()) == (
                404,
                {"state": "none", "refresh_after_seconds": None},
            )
            assert keys[buyers[5]] not in other.text

            # Reads come from the snapshot: at most one DB1 query a second.
            before = httpx.get(f"{gw.url}/healthz").json()["snapshot_queries"]
            started = time.monotonic()
            for _ in range(200):
                assert _get(gw.claim_url(), buyers[5]).status_code == 200
            elapsed = time.monotonic() - started
            after = httpx.get(f"{gw.url}/healthz").json()["snapshot_queries"]
            assert after - before <= elapsed + 2

            async def watch_and_drain() -> list[list[dict]]:
                streams = [
                    asyncio.create_task(_events(f"{gw.claim_url()}/events", b)) for b in buyers[:5]
                ]
                await asyncio.sleep(2.5)  # every stream has had its first frame
                await asyncio.to_thread(drain_all, event, 20)
                return await asyncio.wait_for(asyncio.gather(*streams), 60)

            streams = asyncio.run(watch_and_drain())
            final = _get(gw.claim_url(), buyers[5]).json()
            assert (final["state"], final["position"], final["refresh_after_seconds"]) == (
                "committed",
                None,
                None,
            )

    with psycopg.connect(db2_dsn) as conn:
        tickets = dict(
            conn.execute(
                "select idempotency_key::text, count(*) from public.tickets group by 1"
            ).fetchall()
        )
    for buyer, events in zip(buyers[:5], streams, strict=True):
        states = [e["state"] for e in events]
        assert states[0] == "queued" and states[-1] == "committed", states
        assert [ORDER.index(s) for s in states] == sorted(ORDER.index(s) for s in states)
        # A claim first seen since the last position read has none yet
        # (docs/gateway.md): null may come first, never after a position.
        positions = [e["position"] for e in events if e["state"] == "queued"]
        known = list(itertools.dropwhile(lambda p: p is None, positions))
        assert None not in known and known == sorted(known, reverse=True), positions
        assert {e["idempotency_key"] for e in events} == {keys[buyer]}
        assert tickets[keys[buyer]] == 1
