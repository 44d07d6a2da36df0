"""Standard Webhooks signatures: the secret's form, signing a request, checking one.

Its own module under platform because both sides need it: the configuration
checks a secret when it is read, the drain's webhook client signs with it, and
the test webhook verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        # A malformed whsec_ secret raises binascii.Error (a ValueError).
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    return secret.encode("utf-8")


def check_secret(secret: str) -> None:
    """Raise ValueError, without quoting the secret, if it cannot be used to sign."""
    try:
        key = signing_key(secret)
    except ValueError:
        raise ValueError(f"a {SECRET_PREFIX} secret must be base64 after the prefix") from None
    if not key:
        raise ValueError("the webhook secret is empty")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one request: "v1," and the base64 HMAC-SHA256."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = 300,
    now: int | None = None,
) -> bool:
    """Whether `headers` carry a valid, fresh Standard Webhooks signature of `body`."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    current = int(time.time()) if now is None else now
    # Both directions: a timestamp from the future is as suspicious as a replay.
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    found = False
    # Every entry is compared, so the time taken does not tell which one matched.
    for entry in signatures.split():
        version, _, _ = entry.partition(",")
        if version == "v1" and hmac.compare_digest(entry.encode("utf-8", "replace"), expected):
            found = True
    return found
