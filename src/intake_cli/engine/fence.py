"""The drain's replication fence: DB2 never holds an intent DB1's standbys may lack.

With asynchronous replication a claim commits on DB1's primary, the drain
reads it, the webhook says yes and DB2 records the sale, while the claim
has not reached the standby. Promoted, the standby rebuilds the inventory
without that claim and sells its unit again: DB2 ends with two tickets for
one unit. So before a batch's commits go to DB2, the worker waits until
every standby streaming from DB1 has flushed DB1's WAL up to where it was
when the commits were about to be made, which covers every intent the batch
read. Under synchronous replication a claim is visible only once its standby
has it, so the first query finds nothing to wait for: one round trip per
batch. With no standby, the same.

What the fence cannot give under asynchronous replication: a claim answered
`claimed` and lost with the primary before it was replicated is lost (its
unit goes back on sale). Only synchronous replication keeps those
(docs/failover.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import psycopg

from intake_cli.platform.sqlfiles import queries

# all: every streaming standby; synchronous: those DB1 waits for; off: none.
FenceMode = Literal["all", "synchronous", "off"]
POLL_S = 0.005


@dataclass(frozen=True)
class Crossing:
    """What one fence crossing found."""

    passed: bool
    waited_s: float
    # Standbys whose flush position this role may not read (not waited for).
    hidden: int


def _q(name: str) -> str:
    return queries("replication")[name]


async def cross(conn: psycopg.AsyncConnection, mode: FenceMode, timeout_s: float) -> Crossing:
    """Wait until DB1's standbys have flushed its WAL as it is now; passed=False after timeout_s."""
    if mode == "off":
        return Crossing(True, 0.0, 0)
    started = time.monotonic()
    cur = await conn.execute(_q("fence"), {"mode": mode})
    row = await cur.fetchone()
    assert row is not None
    lsn, behind, hidden = row
    while behind:
        if time.monotonic() - started >= timeout_s:
            return Crossing(False, time.monotonic() - started, hidden)
        await asyncio.sleep(POLL_S)
        cur = await conn.execute(_q("behind"), {"lsn": lsn, "mode": mode})
        again = await cur.fetchone()
        behind = again[0] if again else 0
    return Crossing(True, time.monotonic() - started, hidden)
