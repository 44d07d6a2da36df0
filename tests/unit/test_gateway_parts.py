"""The gateway's pure parts: its configuration, token buckets, token checks."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
import pytest

from intake_cli.engine.claim_views import ClaimView
from intake_cli.faces.gateway.app import STATUS
from intake_cli.faces.gateway.auth import NoVerifier, TokenRefused, Verifier
from intake_cli.faces.gateway.limits import TokenBuckets, retry_after
from intake_cli.faces.gateway.snapshot import (
    NEWCOMERS_SHARE,
    POSITIONS_SHARE,
    REFRESH_S,
    Snapshot,
)
from intake_cli.platform.config import GatewaySettings, loads
from intake_cli.platform.errors import ConfigError

BASE = """
pools:
  - pool_id: p1
    inventory: 10
    validation_webhook_url: http://127.0.0.1:9/v
"""


def test_gateway_section_defaults_and_values() -> None:
    assert loads(BASE).gateway == GatewaySettings()
    settings = loads(BASE + "gateway:\n  max_batch: 50\n  max_wait_ms: 0.5\n  per_ip_rate: 3\n")
    assert (settings.gateway.max_batch, settings.gateway.max_wait_ms) == (50, 0.5)
    assert settings.gateway.per_ip_rate == 3.0


def test_gateway_section_problems_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        loads(BASE + "gateway:\n  max_batch: 5000\n  per_ip_rate: -1\n  colour: red\n")
    text = str(caught.value)
    assert "gateway.max_batch: expected an integer from 1 to 1000" in text
    assert "gateway.per_ip_rate: expected a number above 0" in text
    assert "gateway.colour: unknown key" in text


def test_token_bucket_allows_burst_then_says_when() -> None:
    buckets = TokenBuckets(rate=2, burst=3)
    assert [buckets.take("a", now=0) for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a", now=0) == pytest.approx(0.5)
    assert buckets.take("b", now=0) == 0
    assert buckets.take("a", now=0.5) == 0
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"


def test_every_claim_outcome_has_a_status() -> None:
    outcomes = {
        "claimed",
        "already_claimed",
        "limit_reached",
        "sold_out",
        "paused",
        "recovering",
        "unknown_pool",
        "invalid_user",
    }
    assert set(STATUS) == outcomes


def test_verifier_pins_hs256_and_normalises_the_buyer() -> None:
    secret = "s" * 40
    verifier = Verifier("authenticated", secret, None)
    sub = str(uuid.uuid4()).upper()
    good = jwt.encode({"sub": sub, "aud": "authenticated", "exp": time.time() + 60}, secret)
    assert asyncio.run(verifier.buyer(f"Bearer {good}")) == sub.lower()
    with pytest.raises(TokenRefused, match="expected Authorization"):
        asyncio.run(verifier.buyer(f"Token {good}"))
    with pytest.raises(NoVerifier):
        Verifier("authenticated", "", None)


def test_a_remembered_token_still_expires_and_is_never_lent_to_another() -> None:
    """Verified tokens are remembered so polling buyers skip the signature
    check; a remembered token is still refused once its `exp` has passed,
    and a token that only shares a prefix, or is forged, is checked in full."""
    secret = "s" * 40
    verifier = Verifier("authenticated", secret, None)
    sub = str(uuid.uuid4())
    exp = int(time.time()) + 2
    short = jwt.encode({"sub": sub, "aud": "authenticated", "exp": exp}, secret)
    assert asyncio.run(verifier.buyer(f"Bearer {short}")) == sub
    assert asyncio.run(verifier.buyer(f"Bearer {short}")) == sub  # remembered
    forged = short[:-2] + ("AA" if not short.endswith("AA") else "BB")
    with pytest.raises(TokenRefused, match=r"bad signature|malformed token"):
        asyncio.run(verifier.buyer(f"Bearer {forged}"))
    time.sleep(max(0.0, exp - time.time()) + 1.1)
    with pytest.raises(TokenRefused, match="token expired"):
        asyncio.run(verifier.buyer(f"Bearer {short}"))


def test_positions_are_read_within_their_share_of_db1_time() -> None:
    """Numbering the queue is the snapshot's costly read: after one that took
    0.27 s it waits 0.27 / 5 % ≈ 5.4 s, or 0.27 / 20 % ≈ 1.35 s when a buyer
    with a live claim has no position yet. Final claims need none."""
    snapshot = Snapshot(None, "intents")  # type: ignore[arg-type]
    watched = {"a": 0.0, "b": 0.0}
    assert snapshot._positions_wanted("p", watched, now=0.0)  # never read yet
    took = 0.27
    snapshot._positions_due["p"] = (
        100 + max(REFRESH_S, took / POSITIONS_SHARE),
        100 + max(REFRESH_S, took / NEWCOMERS_SHARE),
    )
    snapshot._views[("p", "a")] = ClaimView("queued", 1, None, None, 4)
    snapshot._ahead[("p", "a")] = 4
    snapshot._views[("p", "b")] = ClaimView("committed", 2, None, None, None)
    assert not snapshot._positions_wanted("p", watched, now=102.0)
    assert snapshot._positions_wanted("p", watched, now=105.5)
    snapshot._views[("p", "b")] = ClaimView("queued", 2, None, None, None)  # a newcomer
    assert not snapshot._positions_wanted("p", watched, now=101.3)
    assert snapshot._positions_wanted("p", watched, now=101.4)
