"""The gateway's pure parts: its configuration, token buckets, token checks."""

from __future__ import annotations

import asyncio
import http.server
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

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
from intake_cli.platform.errors import ConfigError, UsageError

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
        "not_open",
        "opening",
    }
    assert set(STATUS) == outcomes


def test_verifier_pins_hs256_and_normalises_the_buyer() -> None:
    secret = secrets.token_urlsafe(32)
    verifier = Verifier("authenticated", secret, None)
    sub = str(uuid.uuid4()).upper()
    good = jwt.encode({"sub": sub, "aud": "authenticated", "exp": time.time() + 60}, secret)
    assert asyncio.run(verifier.buyer(f"Bearer {good}")) == sub.lower()
    with pytest.raises(TokenRefused, match="expected Authorization"):
        asyncio.run(verifier.buyer(f"Token {good}"))
    with pytest.raises(NoVerifier):
        Verifier("authenticated", None, None)


def test_a_remembered_token_still_expires_and_is_never_lent_to_another() -> None:
    """Verified tokens are remembered so polling buyers skip the signature
    check; a remembered token is still refused once its `exp` has passed,
    and a token that only shares a prefix, or is forged, is checked in full."""
    secret = secrets.token_urlsafe(32)
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


WEAK_SECRETS = {
    "1 byte": "Z",
    "31 bytes": secrets.token_hex(16)[:31],
    "one character repeated": "s" * 64,
    "a word repeated": "secret" * 8,
    "random half repeated": secrets.token_hex(16) * 2,
    "published Supabase example": "super-secret-jwt-token-with-at-least-32-characters-long",
    "empty": "",
    "blanks": " " * 40,
    "two characters": "ab" * 20 + "a",
    "zeros then a one": "0" * 40 + "1",
}


@pytest.mark.parametrize("secret", WEAK_SECRETS.values(), ids=WEAK_SECRETS.keys())
def test_a_guessable_secret_is_refused_whichever_way_it_comes(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any HS256 key anyone can guess lets them sign as any buyer: refused
    with exit 2 and how to make one, from the environment (as every
    `--workers` process reads it) or handed to Verifier directly, with or
    without a JWKS URL beside it; the value itself is never printed."""
    monkeypatch.setenv("INTAKE_JWT_SECRET", secret)
    for make in (
        lambda: Verifier.from_environment("authenticated", None),
        lambda: Verifier.from_environment("authenticated", "https://auth.example/jwks.json"),
        lambda: Verifier("authenticated", secret, None),
    ):
        with pytest.raises(UsageError) as caught:
            make()
        message = str(caught.value)
        assert caught.value.exit_code == 2
        assert "INTAKE_JWT_SECRET" in message
        assert "openssl rand -hex 32" in message
        if secret.strip():  # (the message itself has blanks)
            assert secret not in message


def test_a_strong_secret_is_accepted() -> None:
    from tests.acceptance.gateway_support import SECRET

    for secret in (SECRET, secrets.token_urlsafe(32), secrets.token_hex(32)):
        Verifier("authenticated", secret, None)


PLAIN_HTTP_ELSEWHERE = [
    "http://203.0.113.10/auth/v1/.well-known/jwks.json",
    "HTTP://203.0.113.10/jwks.json",
    "hTtP://auth.example/jwks.json",
    "http://localhost.evil.example/jwks.json",
    "http://127.0.0.1.nip.io/jwks.json",
    "http://[::ffff:7f00:1]/jwks.json",
    "http://[::ffff:127.0.0.1]/jwks.json",
    "http://0.0.0.0/jwks.json",
    "http://[::]/jwks.json",
    "http://0x7f000001/jwks.json",
    "http://localhost./jwks.json",
    "http://evil.example#@127.0.0.1/jwks.json",
    "http://evil.example?@127.0.0.1/jwks.json",
]
NOT_A_KEY_URL = {
    "http://2130706433/jwks.json": "is not an IPv4 address",
    "http://127.1/jwks.json": "is not an IPv4 address",
    "http://0177.0.0.1/jwks.json": "is not an IPv4 address",
    "http://127.0.0.1@evil.example/jwks.json": "may not carry credentials",
    "https://user:pw@auth.example/jwks.json": "may not carry credentials",
    "ftp://127.0.0.1/jwks.json": "expected an http:// or https:// URL",
    "file:///etc/jwks.json": "expected an http:// or https:// URL",
}
KEY_URLS = [
    "https://203.0.113.10/auth/v1/.well-known/jwks.json",
    "HTTPS://auth.example/jwks.json",
    "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json",
    "http://127.255.255.254/jwks.json",
    "http://localhost:9999/jwks.json",
    "http://[::1]:9999/jwks.json",
]


def _jwks_config(url: str) -> str:
    return BASE + f"gateway:\n  jwks_url: '{url}'\n"


@pytest.mark.parametrize("url", PLAIN_HTTP_ELSEWHERE)
def test_keys_over_plain_http_from_another_host_are_refused(url: str) -> None:
    """Whoever can alter that traffic can swap the keys and sign as any buyer."""
    with pytest.raises(ConfigError) as caught:
        loads(_jwks_config(url))
    assert caught.value.exit_code == 2
    assert "gateway.jwks_url: must be an https:// URL" in str(caught.value)
    with pytest.raises(UsageError, match="must be an https:// URL"):
        Verifier("authenticated", None, url)


@pytest.mark.parametrize("url", NOT_A_KEY_URL)
def test_urls_no_client_should_fetch_keys_from_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=NOT_A_KEY_URL[url]):
        loads(_jwks_config(url))
    with pytest.raises(UsageError):
        Verifier("authenticated", None, url)


@pytest.mark.parametrize("url", KEY_URLS)
def test_keys_over_https_or_from_this_host_are_accepted(url: str) -> None:
    assert loads(_jwks_config(url)).gateway.jwks_url == url
    Verifier("authenticated", None, url)


def test_an_interpolated_key_url_is_judged_once_filled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BASE + "gateway:\n  jwks_url: ${AUTH_URL}/auth/v1/.well-known/jwks.json\n"
    monkeypatch.setenv("AUTH_URL", "http://203.0.113.10")
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        loads(config)
    monkeypatch.setenv("AUTH_URL", "https://203.0.113.10")
    assert loads(config).gateway.jwks_url == "https://203.0.113.10/auth/v1/.well-known/jwks.json"
    # A default in the file is judged the same way.
    default = BASE + "gateway:\n  jwks_url: ${NOT_SET_ANYWHERE:-http://auth.example/k}\n"
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        loads(default)


@contextmanager
def _http(answer: http.server.BaseHTTPRequestHandler | type) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), answer)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_key_fetch_follows_no_redirect() -> None:
    """A JWKS URL that answers with a redirect (an https one bent to plain
    http, or to another host) is not followed: the keys found there sign nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="k1", alg="ES256", use="sig")
    asked: list[str] = []

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"keys": [jwk]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    with _http(Keys) as elsewhere:

        class Redirect(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"{elsewhere}/jwks.json")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        with _http(Redirect) as configured:
            verifier = Verifier("authenticated", None, f"{configured}/jwks.json")
            claims = {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": time.time() + 60}
            forged = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
            with pytest.raises(TokenRefused, match="unknown signing key"):
                asyncio.run(verifier.buyer(f"Bearer {forged}"))
    assert asked == []


def test_the_snapshot_watches_configured_pools_only() -> None:
    """A pool id is URL text a buyer chooses: a million made-up ones add no
    pool to the refresh (no DB1 statement) and no memory."""
    snapshot = Snapshot(None, "intents", ("drop",))  # type: ignore[arg-type]
    buyer = str(uuid.uuid4())
    for n in range(1_000_000):
        assert not snapshot.watch(f"made-up-{n}", buyer)
    assert list(snapshot._watched) == ["drop"] and snapshot.watched == 0
    assert not snapshot.watch("drop", buyer)
    assert snapshot.watched == 1


def test_a_buyer_is_told_no_claim_only_after_a_refresh_read_them() -> None:
    """A second request right behind a buyer's first (a poll, a retry, a
    second tab) waits for the refresh that reads them, as the first does: a
    faster door had answered it "no claim" (404) before any read."""
    snapshot = Snapshot(None, "intents", ("drop",))  # type: ignore[arg-type]
    buyer = str(uuid.uuid4())
    assert not snapshot.watch("drop", buyer)
    assert not snapshot.watch("drop", buyer)

    async def one_refresh() -> None:
        refreshed = asyncio.Event()

        async def read_nobody() -> None:
            refreshed.set()

        snapshot._refresh = read_nobody  # type: ignore[method-assign]
        snapshot.start()
        await refreshed.wait()
        await snapshot.stop()

    asyncio.run(one_refresh())
    assert snapshot.watch("drop", buyer)


def test_the_secret_is_vetted_once_and_every_token_still_checked_in_full() -> None:
    """The gateway's decoder keeps its vetting of the HS256 secret: a token
    signed with another secret, for another audience or without `sub` is
    still refused on every try, and the module-wide jwt.decode is untouched."""
    secret = secrets.token_urlsafe(32)
    verifier = Verifier("authenticated", secret, None)
    claims = {"aud": "authenticated", "exp": time.time() + 60}
    for _ in range(2):
        sub = str(uuid.uuid4())
        good = jwt.encode({"sub": sub, **claims}, secret)
        assert asyncio.run(verifier.buyer(f"Bearer {good}")) == sub
        other = jwt.encode({"sub": sub, **claims}, secrets.token_urlsafe(32))
        with pytest.raises(TokenRefused, match="bad signature"):
            asyncio.run(verifier.buyer(f"Bearer {other}"))
        elsewhere = jwt.encode({"sub": sub, **claims, "aud": "other"}, secret)
        with pytest.raises(TokenRefused, match="wrong audience"):
            asyncio.run(verifier.buyer(f"Bearer {elsewhere}"))
        nobody = jwt.encode(claims, secret)
        with pytest.raises(TokenRefused, match="lacks the sub claim"):
            asyncio.run(verifier.buyer(f"Bearer {nobody}"))
    pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"
    with pytest.raises(jwt.InvalidKeyError):
        jwt.decode(good, pem, algorithms=["HS256"], audience="authenticated")


def test_a_view_is_rendered_once_per_refresh_that_changed_it() -> None:
    """Lookups are answered from bytes written once per view: a buyer who
    polls gets the same bytes until a refresh brings a new view or velocity."""
    snapshot = Snapshot(None, "intents", ("drop",))  # type: ignore[arg-type]
    rendered: list[ClaimView] = []

    def render(view: ClaimView, velocity: float | None) -> bytes:
        rendered.append(view)
        return json.dumps([view.ahead, velocity]).encode()

    first = ClaimView("queued", 1, None, None, 40)
    snapshot._views[("drop", "a")] = first
    snapshot._velocity["drop"] = 10.0
    assert snapshot.rendered("drop", "a", first, render) == b"[40, 10.0]"
    assert snapshot.rendered("drop", "a", first, render) == b"[40, 10.0]"
    assert rendered == [first]
    snapshot._velocity["drop"] = 20.0
    assert snapshot.rendered("drop", "a", first, render) == b"[40, 20.0]"
    # A refresh makes a new view even when nothing changed: rendered again.
    second = ClaimView("queued", 1, None, None, 30)
    snapshot._views[("drop", "a")] = second
    assert snapshot.rendered("drop", "a", second, render) == b"[30, 20.0]"
    assert rendered == [first, first, second]


@pytest.mark.parametrize(
    "segment",
    [
        b"",
        b"eyJhbGciOiJIUzI1NiJ9",
        b"eyJhbGciOiJIUzI1NiJ9=",
        b"eyJhbGciOiJIUzI1NiJ9==",
        b"eyJhbGciOiJIUzI1NiJ9===",
        b"YWJj",
        b"YWJj=",
        b"YWI=",
        b"YWI==",
        b"YQ==",
        b"YQ===",
        b"Y",
        b"Y=",
        b"!!!!",
        b"YW J",
        b"YW+/",
        b"YW\nJ",
        b"=YWJ",
        b"YW=J",
        "YWJ\u00e9".encode(),
    ],
)
def test_a_token_segment_is_read_as_pyjwt_reads_it(segment: bytes) -> None:
    """The gateway's faster check of a segment's characters refuses and
    decodes exactly what PyJWT's own does."""
    from jwt.api_jws import PyJWS

    from intake_cli.faces.gateway.auth import _Signer

    def outcome(signer: type[PyJWS]) -> bytes | str:
        try:
            return signer._decode_base64url_segment(segment, "header")
        except jwt.DecodeError as exc:
            return f"refused: {exc}"

    assert outcome(_Signer) == outcome(PyJWS)


def test_a_claim_answer_is_the_claim_as_json_without_its_message() -> None:
    """The gateway writes the claim's fields itself (orjson takes the UUIDs as
    they are): the body must stay what Claim.as_json says, less msg_id."""
    import orjson

    from intake_cli.engine.claims import Claim
    from intake_cli.faces.gateway.app import _answer

    for claim in (
        Claim("claimed", "drop", "u1", uuid.uuid4(), 17, uuid.uuid4(), 5),
        Claim("sold_out", "drop", "u2"),
        Claim("paused", "drop", None),
    ):
        expected = claim.as_json()
        del expected["msg_id"]
        assert orjson.loads(_answer(claim).body) == expected


@pytest.mark.parametrize(
    "aud",
    [
        "authenticated",
        "anon",
        "",
        None,
        ["authenticated"],
        ["anon", "authenticated"],
        ["anon"],
        [],
        [1],
        7,
        {"a": 1},
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_a_token_audience_is_judged_as_pyjwt_judges_it(aud: object, strict: bool) -> None:
    """The gateway's direct comparison of one audience with one named gives
    PyJWT's answer, and every other shape is PyJWT's own."""
    from intake_cli.faces.gateway.auth import _Decoder

    payload = {} if aud is None else {"aud": aud}

    def outcome(decoder: jwt.PyJWT) -> str:
        try:
            decoder._validate_aud(payload, "authenticated", strict=strict)
        except jwt.PyJWTError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "accepted"

    assert outcome(_Decoder()) == outcome(jwt.PyJWT())
