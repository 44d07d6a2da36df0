"""The webhook's and DB2's own ceilings, measured by several client processes.

A ceiling measured by one Python process is that process's ceiling: one
event loop building requests tops out near what one webhook process answers.
Here each ceiling is measured by `clients` processes started together (a
barrier), each running for the same `seconds`; the ceiling is everything
they got done over that time.

- webhook: POSTs from intake's webhook client, nothing else;
- DB2: the commit RPC called directly (ledger.commit_batch) at the drain's
  batch size over as many connections as the fleet has slots, with fresh
  idempotency keys, so every call writes a ticket and a legacy order.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.webhook import WebhookClient
from intake_cli.platform.pgconn import open_async

# A client process that has not reported by then is taken as failed.
_GRACE_S = 60


async def _post_for(url: str, in_flight: int, seconds: float) -> int:
    done = 0
    async with WebhookClient(max_connections=in_flight) as client:
        deadline = time.monotonic() + seconds

        async def loop(n: int) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await client.validate(url, {"n": n}, str(uuid.uuid4()))
                done += 1

        await asyncio.gather(*(loop(n) for n in range(in_flight)))
    return done


def _payload(pool_id: str, n: int) -> dict[str, Any]:
    return {
        "idempotency_key": str(uuid.uuid4()),
        "pool_id": pool_id,
        "user_id": f"ceiling-{n}",
        "resource_id": str(uuid.uuid4()),
        "unit_no": n + 1,
        "claimed_at": datetime.now(UTC).isoformat(),
        "state": "validated",
    }


async def _commit_for(dsn: str, connections: int, batch_size: int, seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        async with await open_async(dsn) as conn:
            rpc = await ledger.check_rpc_async(
                conn, ledger.RpcName.parse("public.finalize_transaction")
            )
            while time.monotonic() < deadline:
                payloads = [_payload("ceiling", n) for n in range(batch_size)]
                outcomes = await ledger.commit_batch(conn, rpc, payloads)
                done += sum(1 for o in outcomes if o.ok)

    await asyncio.gather(*(loop() for _ in range(connections)))
    return done


def _client(kind: str, args: tuple[Any, ...], barrier: Any, results: Any) -> None:
    try:
        barrier.wait(timeout=_GRACE_S)
        if kind == "webhook":
            done = asyncio.run(_post_for(*args))
        else:
            done = asyncio.run(_commit_for(*args))
        results.put(("ok", done))
    except Exception as exc:  # reported to the parent, which raises it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _spread(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


def _measure(kind: str, per_client: list[tuple[Any, ...]], seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(per_client) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(kind, a, barrier, results)) for a in per_client]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=_GRACE_S)
        started = time.monotonic()
        answers = [results.get(timeout=seconds + _GRACE_S) for _ in procs]
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    errors = [text for status, text in answers if status == "error"]
    if errors:
        raise RuntimeError(f"{kind} ceiling: a client failed: {errors[0]}")
    # The clients stop at their deadline, each after its last call returns:
    # the parent's clock, which waited for the last of them, is the fair one.
    return sum(done for _, done in answers) / max(elapsed, seconds)


def webhook_ceiling(url: str, in_flight: int, clients: int, seconds: float) -> float:
    """POSTs/s the webhook answers to `clients` processes with `in_flight` calls between them."""
    clients = max(1, min(clients, in_flight))
    return _measure(
        "webhook", [(url, n, seconds) for n in _spread(in_flight, clients) if n], seconds
    )


def db2_ceiling(dsn: str, connections: int, batch_size: int, clients: int, seconds: float) -> float:
    """Intents/s DB2's commit RPC takes at batch_size per call over `connections` connections."""
    clients = max(1, min(clients, connections))
    per = _spread(connections, clients)
    return _measure("db2", [(dsn, n, batch_size, seconds) for n in per if n], seconds)
