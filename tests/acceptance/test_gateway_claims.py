"""`intake gateway`: buyers claim over HTTP; batched answers equal single claims."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import httpx
import jwt
import psycopg
import pytest

from tests.acceptance.gateway_support import (
    SECRET,
    free_port,
    provision,
    running_gateway,
    token,
)
from tests.conftest import INTAKE, ROOT, snapshot

pytestmark = pytest.mark.timeout(180)

OPEN_LIMITS = {"per_ip_rate": 1_000_000, "per_ip_burst": 1_000_000, "max_wait_ms": 2}


async def _herd(url: str, buyers: list[str]) -> list[tuple[int, dict]]:
    # One connection per buyer: 1,000 clients at once, as a herd arrives.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(buyer: str) -> tuple[int, dict]:
            headers = {"Authorization": f"Bearer {token(buyer)}"}
            async with session.post(url, headers=headers) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(b) for b in buyers))


@pytest.mark.slow
def test_herd_of_1000_buyers_on_250_units(workdir: Path, db1_dsn: str, db2_dsn: str) -> None:
    # Four buyers a unit, all at once on two gateway processes: the batches
    # race for the last units and sell out mid-batch, at any herd size.
    config = provision(workdir, db1_dsn, db2_dsn, 250, OPEN_LIMITS)
    buyers = [str(uuid.uuid4()) for _ in range(1000)]
    with running_gateway(config, db1_dsn, db2_dsn, "--workers", "2") as gw:
        answers = asyncio.run(_herd(gw.claim_url(), buyers))
        # Each buyer's second request: the same unit, already claimed.
        again = asyncio.run(_herd(gw.claim_url(), buyers[:150]))

    outcomes = [body["outcome"] for _, body in answers]
    assert outcomes.count("claimed") == 250
    assert outcomes.count("sold_out") == 750
    assert {status for (status, body) in answers if body["outcome"] == "claimed"} == {200}
    assert {status for (status, body) in answers if body["outcome"] == "sold_out"} == {409}

    claimed = {
        b: body
        for b, (_, body) in zip(buyers, answers, strict=True)
        if body["outcome"] == "claimed"
    }
    with psycopg.connect(db1_dsn) as conn:
        held = dict(
            conn.execute(
                "select locked_by, unit_no from intake.allocations where pool_id = 'drop'"
                " and status = 'locked'"
            ).fetchall()
        )
        queued = conn.execute("select count(*) from pgmq.q_intents").fetchone()[0]
        # What the single claim says for every buyer now: the same unit for
        # the 250, sold out for the rest.
        single = {
            b: conn.execute(
                "select (r).outcome, (r).unit_no, (r).idempotency_key::text from"
                " (select intake.claim_resource('drop', %s) as r) s",
                (b,),
            ).fetchone()
            for b in buyers
        }
    assert held == {b: body["unit_no"] for b, body in claimed.items()}
    assert queued == 250
    for buyer in buyers:
        if buyer in claimed:
            assert single[buyer] == (
                "already_claimed",
                claimed[buyer]["unit_no"],
                claimed[buyer]["idempotency_key"],
            )
        else:
            assert single[buyer][0] == "sold_out"
    for buyer, (status, body) in zip(buyers[:150], again, strict=True):
        if buyer in claimed:
            assert (status, body["outcome"], body["unit_no"]) == (
                200,
                "already_claimed",
                claimed[buyer]["unit_no"],
            )
        else:
            assert (status, body["outcome"]) == (409, "sold_out")


async def _twice(url: str, buyer: str, times: int) -> list[dict]:
    async with aiohttp.ClientSession() as session:

        async def one() -> dict:
            headers = {"Authorization": f"Bearer {token(buyer)}"}
            async with session.post(url, headers=headers) as response:
                return await response.json()

        return await asyncio.gather(*(one() for _ in range(times)))


def test_one_buyer_asking_at_once_gets_one_unit_and_pause_answers_503(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    config = provision(workdir, db1_dsn, db2_dsn, 20, {**OPEN_LIMITS, "max_wait_ms": 50})
    buyer = str(uuid.uuid4())
    with running_gateway(config, db1_dsn, db2_dsn) as gw:
        # A long wait puts the 5 requests into one batch: the buyer twice (and
        # more) in one claim_resources call.
        answers = asyncio.run(_twice(gw.claim_url(), buyer, 5))
        assert sorted(a["outcome"] for a in answers) == ["already_claimed"] * 4 + ["claimed"]
        assert len({a["unit_no"] for a in answers}) == 1
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            conn.execute("update intake.engine_config set paused = true")
        paused = httpx.post(gw.claim_url(), headers={"Authorization": f"Bearer {token()}"})
        assert paused.status_code == 503
        assert paused.json()["outcome"] == "paused"
        assert paused.headers["Retry-After"] == "5"
        unknown = httpx.post(gw.claim_url("nope"), headers={"Authorization": f"Bearer {token()}"})
        assert (unknown.status_code, unknown.json()["outcome"]) == (404, "unknown_pool")


def _refused_tokens() -> dict[str, str]:
    buyer = str(uuid.uuid4())
    unsigned = jwt.encode(
        {"sub": buyer, "aud": "authenticated", "exp": 4102444800}, None, algorithm="none"
    )
    return {
        "bad signature": token(buyer, secret="another-secret-of-at-least-32-bytes!!"),
        "expired": token(buyer, exp=1_600_000_000, iat=1_599_990_000),
        "not yet valid": token(buyer, nbf=4_000_000_000),
        "wrong audience": token(buyer, aud="anon"),
        "alg none": unsigned,
        "alg none, signature kept": unsigned + "c2lnbmF0dXJl",
        "missing sub": _without_sub(),
        "sub not a uuid": token("alice"),
        "sub uuid with junk": token(buyer + "\n"),
        "no exp": jwt.encode({"sub": buyer, "aud": "authenticated"}, SECRET, algorithm="HS256"),
        "HS512 with the secret": jwt.encode(
            {"sub": buyer, "aud": "authenticated", "exp": 4102444800}, SECRET, algorithm="HS512"
        ),
        "garbage": "not.a.jwt",
    }


def _without_sub() -> str:
    return jwt.encode({"aud": "authenticated", "exp": 4102444800}, SECRET, algorithm="HS256")


def test_jwt_matrix_is_refused_and_changes_nothing(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    config = provision(workdir, db1_dsn, db2_dsn, 10, OPEN_LIMITS)
    before = snapshot(db1_dsn)
    with running_gateway(config, db1_dsn, db2_dsn) as gw:
        for case, bad in _refused_tokens().items():
            response = httpx.post(gw.claim_url(), headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code == 401, case
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), case
        for header in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
            assert httpx.post(gw.claim_url(), headers=header).status_code == 401
    assert snapshot(db1_dsn) == before


def test_gateway_without_a_verifier_refuses_to_start(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    import os
    import subprocess

    config = provision(workdir, db1_dsn, db2_dsn, 10, {})
    env = {k: v for k, v in os.environ.items() if k != "INTAKE_JWT_SECRET"}
    proc = subprocess.run(
        [*INTAKE, "-c", str(config), "gateway", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "INTAKE_JWT_SECRET" in proc.stderr
    assert "Traceback" not in proc.stderr
