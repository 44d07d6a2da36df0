"""What the gateway tests share: a provisioned event, a running `intake gateway`, tokens."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg

from tests.conftest import INTAKE, ROOT, intake, pool_spec, write_config

SECRET = "test-secret-of-at-least-32-bytes-for-hs256!"
AUDIENCE = "authenticated"


def token(sub: str | None = None, *, secret: str = SECRET, **claims: Any) -> str:
    """A Supabase-like access token for `sub` (a fresh UUID when None)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": sub or str(uuid.uuid4()),
        "aud": AUDIENCE,
        "role": "authenticated",
        "iat": now,
        "exp": now + 3600,
    }
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gateway:
    url: str
    config: Path
    db1: str
    db2: str
    pool_id: str
    proc: subprocess.Popen[str]

    def claim_url(self, pool_id: str | None = None) -> str:
        return f"{self.url}/v1/pools/{pool_id or self.pool_id}/claim"

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.db1) as conn:
            return conn.execute(query, params).fetchall()


def provision(
    workdir: Path, db1: str, db2: str, inventory: int, gateway: dict[str, Any], **pool: Any
) -> Path:
    spec = pool_spec("drop", inventory, **pool)
    config = write_config(workdir, db1, db2, [spec], gateway=gateway)
    intake("up", config=config, check=True)
    return config


@contextmanager
def running_gateway(
    config: Path, db1: str, db2: str, *args: str, secret: str | None = SECRET
) -> Iterator[Gateway]:
    """`intake gateway` in a subprocess; `secret=None`: no HS256 secret (JWKS only)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "INTAKE_JWT_SECRET"}
    if secret is not None:
        env["INTAKE_JWT_SECRET"] = secret
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below
        mode="w+", prefix="gateway-", suffix=".log", dir=config.parent, delete=False
    )
    proc = subprocess.Popen(
        [*INTAKE, "-c", str(config), "gateway", "--port", str(port), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        # One client for the polls: httpx.get builds one, TLS context and all, per call.
        with httpx.Client(timeout=1) as poll:
            while True:
                try:
                    if poll.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"gateway did not start: {log.read()}")
                time.sleep(0.1)
        yield Gateway(url, config, db1, db2, "drop", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
