"""Standard Webhooks signing and the meaning of each HTTP status, without a server."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import pytest

from intake_cli.engine.drain.webhook import DECLINE_STATUSES, Verdict, _body_reason, classify
from intake_cli.platform.signing import check_secret, sign, verify
from intake_cli.tools.testhook import declines

RAW_KEY = b"test-secret"
SECRET = "whsec_" + base64.b64encode(RAW_KEY).decode()
MSG_ID = "3f1c9e4e-5b8a-4c1e-9a55-2d0f7c1b6a10"
TS = 1_700_000_000
BODY = b'{"idempotency_key":"3f1c9e4e-5b8a-4c1e-9a55-2d0f7c1b6a10","unit_no":7}'


def expected_signature(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    # Computed here from the specification's recipe, independently of sign().
    mac = hmac.new(key, msg_id.encode() + b"." + str(ts).encode() + b"." + body, "sha256")
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(signature: str, ts: int = TS, msg_id: str = MSG_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_sign_matches_the_standard_webhooks_recipe() -> None:
    assert sign(SECRET, MSG_ID, TS, BODY) == expected_signature(RAW_KEY, MSG_ID, TS, BODY)


def test_sign_known_vector() -> None:
    # Pinned, so a change of recipe in both sign() and the helper above still fails.
    digest = hmac.new(b"test-secret", b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", TS, b"{}") == "v1," + base64.b64encode(digest).decode()
    assert sign(SECRET, "msg_1", TS, b"{}") == "v1,9Ctmpz7mljbUKck1EBPvQBbqVfi6VktSukT8ojidVcY="


def test_a_secret_without_prefix_is_used_as_raw_bytes() -> None:
    assert sign("plain-secret", MSG_ID, TS, BODY) == expected_signature(
        b"plain-secret", MSG_ID, TS, BODY
    )
    assert sign("plain-secret", MSG_ID, TS, BODY) != sign(SECRET, MSG_ID, TS, BODY)


def test_a_malformed_whsec_secret_is_an_error() -> None:
    with pytest.raises(binascii.Error):
        sign("whsec_not base64!", MSG_ID, TS, BODY)
    with pytest.raises(ValueError, match="base64") as caught:
        check_secret("whsec_not base64!")
    assert "not base64!" not in str(caught.value)  # the secret is never echoed
    with pytest.raises(ValueError, match="empty"):
        check_secret("whsec_")
    check_secret(SECRET)
    check_secret("plain-secret")


def test_verify_accepts_a_good_signature() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    assert verify(SECRET, headers(good), BODY, now=TS)
    assert verify(SECRET, headers(good), BODY, now=TS + 300)
    assert verify(SECRET, headers(good), BODY, now=TS - 300)


def test_verify_reads_headers_in_any_case() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    mixed = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TS), "Webhook-Signature": good}
    assert verify(SECRET, mixed, BODY, now=TS)


def test_verify_rejects_a_tampered_body() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    assert not verify(SECRET, headers(good), BODY.replace(b"7", b"8"), now=TS)
    assert not verify(SECRET, headers(good), BODY + b" ", now=TS)


def test_verify_rejects_a_tampered_id_or_timestamp() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    assert not verify(SECRET, headers(good, msg_id="another-id"), BODY, now=TS)
    assert not verify(SECRET, headers(good, ts=TS + 1), BODY, now=TS)


def test_verify_rejects_the_wrong_secret() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    other = "whsec_" + base64.b64encode(b"other-secret").decode()
    assert not verify(other, headers(good), BODY, now=TS)
    # Without the prefix the base64 text is itself the key, not what it encodes.
    assert not verify(SECRET.removeprefix("whsec_"), headers(good), BODY, now=TS)


def test_verify_rejects_stale_and_future_timestamps() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    assert not verify(SECRET, headers(good), BODY, now=TS + 301)
    assert not verify(SECRET, headers(good), BODY, now=TS - 301)
    assert verify(SECRET, headers(good), BODY, now=TS + 1000, tolerance_s=1000)


def test_verify_accepts_any_of_several_signatures() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    rotated = expected_signature(b"old-secret", MSG_ID, TS, BODY)
    assert verify(SECRET, headers(f"{rotated} {good}"), BODY, now=TS)
    assert verify(SECRET, headers(f"{good} {rotated}"), BODY, now=TS)
    assert not verify(SECRET, headers(rotated), BODY, now=TS)
    # Only the v1 scheme is understood.
    assert not verify(SECRET, headers("v2," + good.removeprefix("v1,")), BODY, now=TS)
    assert not verify(SECRET, headers(good.removeprefix("v1,")), BODY, now=TS)


@pytest.mark.parametrize(
    "broken",
    [
        {"webhook-timestamp": str(TS), "webhook-signature": "SIG"},
        {"webhook-id": MSG_ID, "webhook-signature": "SIG"},
        {"webhook-id": MSG_ID, "webhook-timestamp": str(TS)},
        {"webhook-id": MSG_ID, "webhook-timestamp": "soon", "webhook-signature": "SIG"},
        {"webhook-id": MSG_ID, "webhook-timestamp": str(TS), "webhook-signature": ""},
    ],
)
def test_verify_rejects_missing_or_malformed_headers(broken: dict[str, str]) -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    filled = {name: value.replace("SIG", good) for name, value in broken.items()}
    assert not verify(SECRET, filled, BODY, now=TS)


def test_verify_checks_the_clock_by_default() -> None:
    good = expected_signature(RAW_KEY, MSG_ID, TS, BODY)
    assert not verify(SECRET, headers(good), BODY)  # TS is long past


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.VALIDATED),
        (201, Verdict.VALIDATED),
        (204, Verdict.VALIDATED),
        (299, Verdict.VALIDATED),
        (400, Verdict.REJECTED),
        (402, Verdict.REJECTED),
        (409, Verdict.REJECTED),
        (422, Verdict.REJECTED),
        # Misconfiguration and transient trouble must never lose the intent.
        (100, Verdict.RETRY),
        (301, Verdict.RETRY),
        (302, Verdict.RETRY),
        (304, Verdict.RETRY),
        (401, Verdict.RETRY),
        (403, Verdict.RETRY),
        (404, Verdict.RETRY),
        (405, Verdict.RETRY),
        (408, Verdict.RETRY),
        (429, Verdict.THROTTLED),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
    ],
)
def test_classify(status: int, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_decline_statuses_are_exactly_the_definite_noes() -> None:
    assert frozenset({400, 402, 409, 422}) == DECLINE_STATUSES


def test_test_webhook_declines_a_stable_share_of_keys() -> None:
    keys = [f"key-{n}" for n in range(10_000)]
    declined = [key for key in keys if declines(key, 0.1)]
    assert 850 < len(declined) < 1150
    assert declined == [key for key in keys if declines(key, 0.1)]
    assert not any(declines(key, 0.0) for key in keys)
    assert all(declines(key, 1.0) for key in keys)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"reason": "card declined"}', "application/json", "card declined"),
        (b'{"error": "insufficient funds", "message": "later"}', "application/json",
         "insufficient funds"),
        (b'{"message": "limit\\n  exceeded"}', "", "limit exceeded"),
        (b'{"error": {"code": 7, "message": "expired card"}}', "application/json",
         "expired card"),
        (b'{"status": "unavailable"}', "application/json", ""),
        (b"[1, 2]", "application/json", ""),
        (b"{not json", "application/json", ""),
        (b"try again later", "text/plain; charset=utf-8", "try again later"),
        (b"<html><body>502 Bad Gateway</body></html>", "text/html", ""),
        (b"", "application/json", ""),
    ],
)  # fmt: skip
def test_the_reason_is_the_webhooks_own_words(body: bytes, content_type: str, reason: str) -> None:
    assert _body_reason(body, content_type) == reason


def test_a_long_reason_is_cut_short() -> None:
    reason = _body_reason(b'{"reason": "' + b"x" * 5000 + b'"}', "application/json")
    assert len(reason) == 200 and reason.endswith("…")
