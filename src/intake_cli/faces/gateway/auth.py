"""Who the buyer is: the `sub` of a JWT the gateway verified itself.

Two ways to check a signature, chosen by the operator, never by the token:
HS256 with the secret in INTAKE_JWT_SECRET (how Supabase signs its access
tokens by default), or the public keys at a JWKS URL (asymmetric keys, RS256
or ES256). The token's own `alg` header only has to agree with what is pinned
here; `none` is never in the list. `exp` is required, `nbf` and `aud` are
checked.

The secret and the JWKS URL are checked where they enter, in Verifier itself,
so no way of starting a gateway skips them: a guessable HS256 secret lets anyone sign as any buyer,
so the secret must pass the shared rule (platform/secrets.py: 32 bytes or
more, not a repeated or published value); keys come over https (plain http
only from loopback, config.check_jwks_url), and PyJWKClient fetches them
without following redirects (PyJWT 2.14+), so an https URL cannot be bent
back to plain http.

The buyer id is the `sub`, which must be a UUID (Supabase's user
ids): it is passed to DB1 in canonical lower-case form, the text
`auth.uid()::text` gives, so a buyer is the same user through PostgREST and
through the gateway.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.utils import base64url_decode

from intake_cli.platform import secrets
from intake_cli.platform.config import check_jwks_url
from intake_cli.platform.errors import UsageError

SECRET_ENV = "INTAKE_JWT_SECRET"
HMAC_ALGORITHMS = ["HS256"]
# Asymmetric algorithms a JWKS key may declare; anything else is refused.
JWKS_ALGORITHMS = ["RS256", "ES256"]
# Fetched keys are kept this long; a token naming an unknown key id triggers
# one fetch (PyJWKClient's own cache rate-limits that).
JWKS_CACHE_S = 300.0

# Verified tokens are remembered (token text -> buyer, until min(exp, this
# long)): a buyer who polls their claim every few seconds sends the same
# token each time, and checking its signature again is most of a lookup's
# cost. Bounded, and short enough that a key withdrawn from the JWKS stops
# working within it.
VERIFIED_CACHE_S = 60.0
VERIFIED_CACHE_MAX = 100_000

# Claims a token must carry: PyJWT refuses one without them.
REQUIRED_CLAIMS = ["exp", "sub"]

BUYER_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class TokenRefused(Exception):
    """The request carries no token the gateway accepts (401)."""


class NoVerifier(UsageError):
    """Neither INTAKE_JWT_SECRET nor gateway.jwks_url is set: the gateway cannot verify buyers."""


class _SecretHMAC(HMACAlgorithm):
    """HS256 that vets the operator's secret once, not on every token.

    PyJWT makes sure an HMAC key is not an asymmetric key in disguise (PEM,
    SSH, DER, a JWK) each time it verifies: ~11 µs of a ~30 µs check, for a
    secret that never changes. The first vetting of that secret is kept; any
    other key is vetted every time, as PyJWT does.
    """

    def __init__(self, secret: str) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._secret = secret
        self._vetted: bytes | None = None

    def prepare_key(self, key: str | bytes) -> bytes:
        if self._vetted is not None and key == self._secret:
            return self._vetted
        prepared = super().prepare_key(key)
        if key == self._secret:
            self._vetted = prepared
        return prepared


# What a token's segment may hold before its '=' padding (RFC 7515 §2).
_BASE64URL_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


class _Signer(PyJWS):
    """PyJWS with its check of each segment's characters made by a regular
    expression: PyJWT tests them one by one in Python, ~8 µs of a ~23 µs
    check for a new token. The rules are PyJWT's (at most two '=' and only
    where the length allows them, no length of 1 mod 4, only the URL-safe
    alphabet); the unit tests hold the two to the same answers."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if (
            padding > 2
            or (padding and len(segment) % 4)
            or len(stripped) % 4 == 1
            or not _BASE64URL_SEGMENT.fullmatch(stripped)
        ):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            return base64url_decode(stripped)
        except (TypeError, binascii.Error) as exc:
            raise jwt.DecodeError(f"Invalid {name} padding") from exc


class _Decoder(jwt.PyJWT):
    """PyJWT reading the (already verified) payload with orjson: ~3 µs less
    per token than the standard library's json, through the hook PyJWT
    keeps for subclasses."""

    def _validate_aud(
        self, payload: dict[str, Any], audience: str | Iterable[str] | None, *, strict: bool = False
    ) -> None:
        # A Supabase token's shape, one audience asked and one named: compared
        # directly, not through PyJWT's generators (~3 µs a new token). Any
        # other shape, an empty one included, is PyJWT's to judge.
        claimed = payload.get("aud")
        if isinstance(audience, str) and isinstance(claimed, str) and claimed and not strict:
            if claimed != audience:
                raise jwt.InvalidAudienceError("Audience doesn't match")
            return
        super()._validate_aud(payload, audience, strict=strict)

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = orjson.loads(decoded["payload"])
        except orjson.JSONDecodeError as exc:
            raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


def _decoder(secret: str | None) -> jwt.PyJWT:
    """A PyJWT of the gateway's own: `exp` and `sub` required, and the HS256
    secret vetted once. The algorithm is swapped with PyJWS's register_algorithm
    on this decoder's own signer (PyJWT gives no other way to reach it), so
    the module-wide jwt.decode keeps PyJWT's HS256 untouched."""
    decoder = _Decoder(options={"require": REQUIRED_CLAIMS})
    decoder._jws = signer = _Signer(options=decoder._get_sig_options())
    if secret is not None:
        signer.unregister_algorithm("HS256")
        signer.register_algorithm("HS256", _SecretHMAC(secret))
    return decoder


@dataclass
class _CachedKey:
    key: object
    algorithm: str
    fetched_at: float


class Verifier:
    def __init__(self, audience: str, secret: str | None, jwks_url: str | None) -> None:
        if secret is not None:
            secrets.check(SECRET_ENV, secret)
        if jwks_url is not None and (reason := check_jwks_url(jwks_url)) is not None:
            raise UsageError(f"gateway.jwks_url {reason}")
        if not secret and not jwks_url:
            raise NoVerifier()
        self._audience = audience
        self._secret = secret or None
        self._decoder = _decoder(self._secret)
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=5) if jwks_url else None
        self._keys: dict[str, _CachedKey] = {}
        # token -> (buyer, epoch seconds after which it must be checked again)
        self._verified: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_environment(cls, audience: str, jwks_url: str | None) -> Verifier:
        return cls(audience, os.environ.get(SECRET_ENV), jwks_url)

    async def buyer(self, authorization: str | None) -> str:
        """The buyer id of a verified `Authorization: Bearer …` header, or TokenRefused."""
        token = _bearer(authorization)
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known[1]:
                return known[0]
            del self._verified[token]
        key: object
        if self._jwks is None:
            # One way to verify: jwt.decode holds the token's alg to it, and
            # parsing the header first as well would cost a third of a check.
            key, algorithms = self._secret, HMAC_ALGORITHMS
        else:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise TokenRefused("malformed token") from None
            if self._secret is not None and header.get("alg") in HMAC_ALGORITHMS:
                key, algorithms = self._secret, HMAC_ALGORITHMS
            else:
                cached = await self._signing_key(header.get("kid"))
                key, algorithms = cached.key, [cached.algorithm]
        try:
            claims = self._decoder.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=algorithms,
                audience=self._audience,
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(_reason(exc)) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not BUYER_ID.fullmatch(sub):
            raise TokenRefused("sub is not a user id (expected a UUID)")
        buyer = sub.lower()
        self._remember(token, buyer, claims["exp"])
        return buyer

    def _remember(self, token: str, buyer: str, exp: object) -> None:
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            # Dicts keep insertion order: the oldest entries go first.
            for stale in list(itertools.islice(self._verified, VERIFIED_CACHE_MAX // 10)):
                del self._verified[stale]
        # `exp` was checked by jwt.decode: a number.
        until = min(float(exp), time.time() + VERIFIED_CACHE_S)  # type: ignore[arg-type]
        self._verified[token] = (buyer, until)

    async def _signing_key(self, kid: object) -> _CachedKey:
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("token names no key (kid)")
        cached = self._keys.get(kid)
        if cached is not None and time.monotonic() - cached.fetched_at < JWKS_CACHE_S:
            return cached
        assert self._jwks is not None
        try:
            # PyJWKClient fetches with urllib: off the event loop.
            found = await asyncio.to_thread(self._jwks.get_signing_key, kid)
        except jwt.PyJWTError:
            raise TokenRefused("unknown signing key") from None
        algorithm = found.algorithm_name
        if algorithm not in JWKS_ALGORITHMS:
            raise TokenRefused("signing key algorithm not accepted")
        cached = _CachedKey(found.key, algorithm, time.monotonic())
        self._keys[kid] = cached
        return cached


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenRefused("missing Authorization: Bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRefused("expected Authorization: Bearer <token>")
    return token.strip()


def _reason(exc: jwt.PyJWTError) -> str:
    # Fixed phrases, never the token's text: the reason is sent back to the client.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"
