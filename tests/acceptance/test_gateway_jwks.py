"""`intake gateway` with `gateway.jwks_url`: RS256 tokens checked against keys a real
HTTP server publishes; a token signed with any other key is refused and changes nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.acceptance.gateway_support import AUDIENCE, free_port, provision, running_gateway

pytestmark = pytest.mark.timeout(120)

KID = "intake-test-key"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@contextmanager
def jwks_server(public_key: rsa.RSAPublicKey) -> Iterator[tuple[str, list[str]]]:
    """An aiohttp server on its own thread publishing one RS256 key as a JWKS;
    yields its URL and the paths it was asked for."""
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update(kid=KID, alg="RS256", use="sig")
    asked: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", keys)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "the JWKS server did not start"
    try:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json", asked
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _claims(sub: str) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": AUDIENCE, "role": "authenticated", "iat": now, "exp": now + 600}


def _rs256(key: rsa.RSAPrivateKey, sub: str, kid: str = KID) -> str:
    return jwt.encode(_claims(sub), key, algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(public_pem: bytes, sub: str) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the published public key
    (PyJWT refuses to make one, so it is signed by hand)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = _b64(json.dumps(_claims(sub)).encode())
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def test_rs256_tokens_are_checked_against_the_published_keys(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    signer, stranger = _rsa_key(), _rsa_key()
    public_pem = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    buyer, forger_subs = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(4)]
    refused_tokens = {
        "signed with another key": _rs256(stranger, forger_subs[0]),
        "an unpublished key id": _rs256(stranger, forger_subs[1], kid="other-key"),
        "HS256 keyed with the public key": _hs256_with_public_key(public_pem, forger_subs[2]),
        "alg none": jwt.encode(_claims(forger_subs[3]), None, algorithm="none"),
    }
    with jwks_server(signer.public_key()) as (jwks_url, asked):
        config = provision(workdir, db1_dsn, db2_dsn, 10, {"jwks_url": jwks_url})
        with running_gateway(config, db1_dsn, db2_dsn, secret=None) as gw:
            refused = {
                why: httpx.post(gw.claim_url(), headers={"Authorization": f"Bearer {t}"})
                for why, t in refused_tokens.items()
            }
            accepted = httpx.post(
                gw.claim_url(), headers={"Authorization": f"Bearer {_rs256(signer, buyer)}"}
            )
            again = httpx.post(
                gw.claim_url(), headers={"Authorization": f"Bearer {_rs256(signer, buyer)}"}
            )
            held = gw.rows(
                "select locked_by, unit_no from intake.allocations"
                " where pool_id = 'drop' and status = 'locked'"
            )
            queued = gw.rows("select message->>'user_id' from pgmq.q_intents")

    for why, response in refused.items():
        assert response.status_code == 401, (why, response.text)
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', why
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert (body["outcome"], body["user_id"]) == ("claimed", buyer)
    assert again.status_code == 200
    assert (again.json()["outcome"], again.json()["unit_no"]) == (
        "already_claimed",
        body["unit_no"],
    )
    # Only the buyer with a token from the published key holds anything.
    assert held == [(buyer, body["unit_no"])]
    assert queued == [(buyer,)]
    # The keys were fetched from the server (and cached, not fetched per request).
    assert asked and len(asked) < len(refused_tokens) + 2
