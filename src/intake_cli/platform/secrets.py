"""How strong a shared secret from the environment must be before intake starts with it.

A bearer token or an HS256 key that can be guessed is no lock at all: a
1-byte HS256 key falls to a brute force at once, and RFC 7518 §3.2 asks
for a key of at least 256 bits. intake cannot measure the randomness of a
value, so it refuses what is certainly weak and says how to make one that
is not:

- fewer than MIN_SECRET_BYTES bytes (32: 256 bits if every byte were random);
- a value made by repeating a shorter one (`abcabcabc…`, `aaaa…`), or half
  of which is one short piece repeated (`passwordpasswordpassword12345678`)
  or one run up or down the alphabet (`0123456789abcdef…`);
- too few different characters to be random (under MIN_ESTIMATED_BITS by a
  per-character entropy estimate over its length: every one of 200,000
  random 32-character hex values scored over 90, `0000…1` scores 7);
- a value published as an example (Supabase's local development JWT secret).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter

from intake_cli.platform.errors import UsageError

MIN_SECRET_BYTES = 32
MIN_ESTIMATED_BITS = 80
# Secrets printed in public documentation and templates: anyone can sign with them.
PUBLISHED = frozenset({"super-secret-jwt-token-with-at-least-32-characters-long"})
HOW_TO_MAKE = (
    "make one with `openssl rand -hex 32` or "
    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)


def weakness(value: str) -> str | None:
    """Why `value` is too weak to be a shared secret, or None when it is not refused."""
    if value in PUBLISHED:
        return "it is a published example value"
    size = len(value.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        unit = "byte" if size == 1 else "bytes"
        return f"it is {size} {unit} long; at least {MIN_SECRET_BYTES} are required"
    if _repeats_a_shorter_value(value):
        return "it repeats a shorter value"
    if _half_is_a_pattern(value):
        return "half of it or more is one piece repeated or a run like abcd or 1234"
    if _estimated_bits(value) < MIN_ESTIMATED_BITS:
        return "it uses too few different characters to be random"
    return None


def check(name: str, value: str) -> str:
    """`value` of the environment variable `name`, or UsageError (exit 2) saying how to fix it."""
    if not value.strip():
        raise UsageError(f"{name} is set but empty: give it a secret ({HOW_TO_MAKE}), or unset it")
    if reason := weakness(value):
        raise UsageError(f"{name} is too weak to be a secret: {reason}; {HOW_TO_MAKE}")
    return value


def from_env(name: str) -> str | None:
    """The checked value of `name`, or None when it is not set."""
    value = os.environ.get(name)
    return None if value is None else check(name, value)


def _repeats_a_shorter_value(value: str) -> bool:
    # A string is a repetition of a shorter one exactly when it occurs in
    # itself doubled at an offset other than 0 and len.
    return (value + value).find(value, 1) < len(value)


def _half_is_a_pattern(value: str) -> bool:
    half = len(value) / 2
    # A run of consecutive characters (abcd…, 9876…): steps of +1 or -1.
    run, last_step = 1, 0
    for left, right in itertools.pairwise(value):
        step = ord(right) - ord(left)
        run = run + 1 if step in (1, -1) and (run == 1 or step == last_step) else 1
        last_step = step
        if run >= half:
            return True
    # One piece repeated back to back over half the value.
    size = len(value)
    for width in range(1, int(half) + 1):
        for start in range(size - 2 * width + 1):
            piece = value[start : start + width]
            copies = 1
            while value.startswith(piece, start + copies * width):
                copies += 1
            if copies >= 2 and copies * width >= half:
                return True
    return False


def _estimated_bits(value: str) -> float:
    counts = Counter(value)
    total = len(value)
    per_character = -sum(n / total * math.log2(n / total) for n in counts.values())
    return per_character * total
