"""Names that travel into SQL, queue payloads and log lines: pool ids, queue and RPC
names, buyer ids. Strict patterns keep them printable and unquotable."""

from __future__ import annotations

import re

from intake_cli.platform.config.problems import _show

# Pool ids end up in queue payloads, metric labels and log lines; a strict
# pattern keeps them printable and makes quoting mistakes impossible.
POOL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# pgmq turns the queue name into table names (q_<name>, a_<name>) and caps
# its length; the DLQ adds a suffix, hence the shorter bound.
QUEUE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# schema.function, both plain lower-case identifiers: anything else (quotes,
# parentheses, semicolons) is refused before it can get near SQL text.
RPC_NAME_PATTERN = re.compile(r"^(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")


def check_rpc_name(value: str) -> str | None:
    """The reason a commit RPC name is unsafe, or None when it is fine."""
    if not RPC_NAME_PATTERN.fullmatch(value):
        return (
            "expected [schema.]function in lower-case letters, digits and underscores, "
            f"got {_show(value)}"
        )
    return None


def check_pool_id(value: str) -> str | None:
    if not POOL_ID_PATTERN.fullmatch(value):
        return (
            "expected 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter "
            f"or digit, got {_show(value)}"
        )
    return None


# Bytes of an argument that were not UTF-8 arrive as these (surrogateescape).
_UNDECODED = re.compile(r"[\ud800-\udfff]")


def check_user_id(value: str) -> str | None:
    """The reason a buyer id cannot even be sent to DB1, or None.

    Only text that cannot be encoded is refused here; DB1's claim function
    judges the rest (length, control characters) and answers `invalid_user`.
    """
    if _UNDECODED.search(value):
        return "expected UTF-8 text (the argument holds bytes that are not)"
    return None
