"""The bare drain: the least a Python drain can do with the same I/O as `intake drain`.

Issue 15's reference for one process: read a batch of the queue with
`pgmq.read`, POST every message to the webhook, insert the batch into DB2 in
one statement, archive it with `pgmq.archive`. No state machine, no
recording of answers, no unit checks, no retries, no metrics: what is left
of `intake drain`'s cost when everything that keeps its promises is taken
away. `intake bench drain` runs it as one process beside `intake drain` in
the same run, on the same seeded queue shape, and reports the ratio.

Same client settings as the drain's webhook client (aiohttp, 256
connections, uvloop where installed), one DB1 and one DB2 connection per
slot. Progress goes to a small file after every batch (the benchmark polls
it; counting the archive would load DB1).

    python -m intake_cli.tools.bench.bare_drain DB1 DB2 URL QUEUE BATCH SLOTS PROGRESS
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from pathlib import Path

import aiohttp

from intake_cli.engine.drain import worker
from intake_cli.platform import eventloop
from intake_cli.platform.pgconn import open_async, open_sync

# What the drain's webhook client allows at once (engine/webhook.py).
MAX_CONNECTIONS = 256
LEASE_S = 30

CREATE_TABLE = """
create table if not exists bare_tickets (
    idempotency_key uuid primary key,
    payload jsonb not null
)"""
INSERT = """
insert into bare_tickets (idempotency_key, payload)
select (e ->> 'idempotency_key')::uuid, e from jsonb_array_elements(%s::jsonb) as e
on conflict do nothing"""


class BareDrain:
    def __init__(self, db1: str, db2: str, url: str, queue: str, batch: int, progress: Path):
        self.db1, self.db2, self.url, self.queue = db1, db2, url, queue
        self.batch, self.progress = batch, progress
        self.done = 0

    async def run(self, slots: int) -> int:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self._slot(session) for _ in range(slots)))
        return self.done

    async def _slot(self, session: aiohttp.ClientSession) -> None:
        async with await open_async(self.db1) as db1, await open_async(self.db2) as db2:
            while True:
                cur = await db1.execute(
                    "select msg_id, message from pgmq.read(%s, %s, %s)",
                    (self.queue, LEASE_S, self.batch),
                )
                rows = await cur.fetchall()
                if not rows:
                    return
                await asyncio.gather(*(self._post(session, message) for _, message in rows))
                await db2.execute(INSERT, (json.dumps([message for _, message in rows]),))
                await db1.execute(
                    "select pgmq.archive(%s, %s::bigint[])",
                    (self.queue, [msg_id for msg_id, _ in rows]),
                )
                self.done += len(rows)
                self._report()

    async def _post(self, session: aiohttp.ClientSession, message: dict) -> None:
        body = json.dumps(message).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(message["idempotency_key"]),
        }
        async with session.post(self.url, data=body, headers=headers) as response:
            await response.read()
            if response.status >= 300:
                raise RuntimeError(f"webhook answered {response.status}")

    def _report(self) -> None:
        partial = self.progress.with_suffix(".tmp")
        partial.write_text(str(self.done))
        os.replace(partial, self.progress)


def prepare_db2(dsn: str) -> None:
    with open_sync(dsn) as conn:
        conn.execute(CREATE_TABLE)


def main(argv: list[str]) -> int:
    db1, db2, url, queue, batch, slots, progress = argv
    drain = BareDrain(db1, db2, url, queue, int(batch), Path(progress))
    # The collector as `intake drain` sets it while draining: the floor
    # keeps every saving the drain itself may make, so the ratio measures
    # only what the drain's promises cost.
    gc.set_threshold(*worker.GC_THRESHOLDS)
    eventloop.run(drain.run(int(slots)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
