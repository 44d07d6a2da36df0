"""`intake gateway` against the outside security sweep (issue 21): a guessable
JWT secret or signing keys over plain http stop it before it listens, and a
pool id a buyer makes up costs DB1 nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import httpx
import psycopg
import pytest

from tests.acceptance.gateway_support import (
    SECRET,
    free_port,
    provision,
    running_gateway,
    token,
)
from tests.conftest import INTAKE, ROOT, pool_spec, snapshot, write_config

pytestmark = pytest.mark.timeout(180)

OPEN = {
    "per_ip_rate": 1_000_000,
    "per_ip_burst": 1_000_000,
    "per_buyer_rate": 1000,
    "per_buyer_burst": 1000,
}
# How long a refused gateway may take to say so (a Python start-up on a busy
# machine); one that is still running after this has started.
REFUSAL_S = 30.0


def _start(
    config: Path, secret: str | None, *args: str, **env: str
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "INTAKE_JWT_SECRET"}
    if secret is not None:
        environment["INTAKE_JWT_SECRET"] = secret
    environment.update(env)
    proc = subprocess.Popen(
        [*INTAKE, "-c", str(config), "gateway", "--port", str(port), *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _refused(proc: subprocess.Popen, port: int) -> tuple[int, str]:
    """The exit code and output of a gateway that must refuse to start; fails
    (and stops it) if it is still running after REFUSAL_S or ever listens."""
    deadline = time.monotonic() + REFUSAL_S
    listened = False
    while proc.poll() is None and time.monotonic() < deadline:
        listened = listened or _listening(port)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate()
    assert not listened and not _listening(port), f"it listened on {port}: {stdout}{stderr}"
    assert proc.returncode is not None and proc.returncode >= 0, f"still running: {stdout}"
    return proc.returncode, stdout + stderr


WEAK = {
    "one byte": ("Z", "it is 1 byte long; at least 32 are required"),
    "31 bytes": ("7f3a9c02e4b1d86f5a0c3e7b29d41f8", "it is 31 bytes long"),
    "repeated": ("0123456789abcdef" * 4, "it repeats a shorter value"),
    "supabase example": (
        "super-secret-jwt-token-with-at-least-32-characters-long",
        "it is a published example value",
    ),
    "empty": ("", "INTAKE_JWT_SECRET is set but empty"),
}


@pytest.mark.slow
def test_a_guessable_secret_stops_the_gateway_before_it_listens(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    """Exit 2 and how to make a good secret, before any port is bound or DB1
    touched, for one process and for --workers (each child would read the
    same variable); the secret is never printed back."""
    config = provision(workdir, db1_dsn, db2_dsn, 10, OPEN)
    before = snapshot(db1_dsn)
    started = {
        (case, workers): _start(config, WEAK[case][0], "--workers", workers)
        for case, workers in [(case, "1") for case in WEAK]
        + [("one byte", "2"), ("supabase example", "2")]
    }
    for (case, workers), (proc, port) in started.items():
        secret, reason = WEAK[case]
        code, output = _refused(proc, port)
        assert code == 2, (case, workers, output)
        assert reason in output, (case, workers, output)
        assert "openssl rand -hex 32" in output
        assert "listening" not in output and "Traceback" not in output
        if len(secret) > 1:
            assert secret not in output
    assert snapshot(db1_dsn) == before


@pytest.mark.parametrize(
    ("jwks_url", "env"),
    [
        ("http://203.0.113.10/auth/v1/.well-known/jwks.json", {}),
        ("HTTP://localhost.evil.example/jwks.json", {}),
        ("${AUTH_URL}/auth/v1/.well-known/jwks.json", {"AUTH_URL": "http://203.0.113.10"}),
    ],
    ids=["plain-http", "upper-case-lookalike", "interpolated"],
)
def test_signing_keys_over_plain_http_stop_the_gateway(
    workdir: Path, db1_dsn: str, db2_dsn: str, jwks_url: str, env: dict[str, str]
) -> None:
    """Whoever can alter that traffic could mint any buyer: refused at start."""
    pools = [pool_spec("drop", 10)]
    config = write_config(workdir, db1_dsn, db2_dsn, pools, gateway={"jwks_url": jwks_url})
    before = snapshot(db1_dsn)
    code, output = _refused(*_start(config, None, **env))
    assert code == 2, output
    assert "gateway.jwks_url: must be an https:// URL" in output
    assert snapshot(db1_dsn) == before


def _db1_work(dsn: str) -> tuple[int, int]:
    """DB1's table reads (every statement the gateway runs reads a table) and
    committed transactions, as the statistics show them now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        reads = conn.execute(
            "select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::bigint"
            " from pg_stat_user_tables"
        ).fetchone()
        commits = conn.execute(
            "select xact_commit from pg_stat_database where datname = current_database()"
        ).fetchone()
    assert reads is not None and commits is not None
    return int(reads[0]), int(commits[0])


async def _ask(url: str, buyers: list[str], pools: list[str]) -> list[tuple[str, int, dict]]:
    """Every buyer asks about (GET), claims from (POST) and streams every pool."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def one(method: str, buyer: str, path: str) -> tuple[str, int, dict]:
            headers = {"Authorization": f"Bearer {token(buyer)}"}
            async with session.request(method, f"{url}{path}", headers=headers) as response:
                if response.content_type == "text/event-stream":
                    return method, response.status, {}  # a stream was opened: not refused
                return method, response.status, await response.json()

        asks = [
            one(method, buyer, f"/v1/pools/{pool}/claim{tail}")
            for buyer in buyers
            for pool in pools
            for method, tail in (("GET", ""), ("POST", ""), ("GET", "/events"))
        ]
        return await asyncio.gather(*asks)


@pytest.mark.slow
@pytest.mark.serial
def test_made_up_pools_cost_db1_nothing(workdir: Path, db1_dsn: str, db2_dsn: str) -> None:
    """5 buyers, 25 made-up pool ids (reads, claims, event streams) are each
    answered 404 from memory: DB1's statistics do not move during them or in
    the seconds after (the old gateway watched each id, one statement per id
    per second for a minute), and nothing is watched. Then one read of the
    configured pool shows the same statistics do see the gateway's work."""
    config = provision(workdir, db1_dsn, db2_dsn, 10, OPEN)
    buyers = [str(uuid.uuid4()) for _ in range(5)]
    made_up = [f"made-up-{n}" for n in range(24)] + ["DROP"]
    with running_gateway(config, db1_dsn, db2_dsn, secret=SECRET) as gw:
        health = httpx.get(f"{gw.url}/healthz").json()
        reads_before, commits_before = _db1_work(db1_dsn)
        started = time.monotonic()
        answers = asyncio.run(_ask(gw.url, buyers, made_up))
        took = time.monotonic() - started
        time.sleep(3)  # the old gateway refreshed each watched id every second
        reads_after, commits_after = _db1_work(db1_dsn)
        after = httpx.get(f"{gw.url}/healthz").json()

        assert reads_after == reads_before, f"DB1 read {reads_after - reads_before} tables"
        # This test's own statistics connections, and room for an autovacuum
        # visit; the old gateway committed 25 statements a second here.
        assert commits_after - commits_before <= 10, commits_after - commits_before
        assert after["watched"] == 0
        for counter in ("snapshot_queries", "claim_batches", "claims"):
            assert after[counter] == health[counter], counter
        assert len(answers) == 3 * 5 * 25
        assert {(status, body.get("outcome")) for _, status, body in answers} == {
            (404, "unknown_pool")
        }
        assert took < 5, f"made-up pools were answered in {took:.1f} s, not from memory"

        # The control: the configured pool is watched, and DB1 sees it.
        mine = httpx.get(gw.claim_url(), headers={"Authorization": f"Bearer {token(buyers[0])}"})
        assert mine.status_code == 404 and mine.json()["state"] == "none"
        deadline = time.monotonic() + 15
        while _db1_work(db1_dsn)[0] == reads_after and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _db1_work(db1_dsn)[0] > reads_after
