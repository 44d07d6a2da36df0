"""What batches share (engine/drain/context.py), and a batch against a real HTTP webhook.

The webhook here is an aiohttp server in this process, called by the
drain's own WebhookClient: the HTTP answers a batch acts on, end to end,
still without a database.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from aiohttp import web

import intake_cli.engine.drain
from intake_cli.engine.drain.batch import one_batch
from intake_cli.engine.drain.context import DrainContext, DrainStats, Heartbeat
from intake_cli.engine.drain.phases import NO_PHASES
from intake_cli.engine.drain.webhook import WebhookClient
from tests.unit.drain_memory_store import FakeClock, MemoryStore, settings

# -- the heartbeat ------------------------------------------------------------------


def test_the_heartbeat_sends_the_running_counts():
    store = MemoryStore(FakeClock())
    counts: Counter[str] = Counter(batches=3, committed=40)
    beat = Heartbeat(store, logging.getLogger("t"), "host:1:abc", counts, lambda: 7)
    asyncio.run(beat.beat())
    counts["committed"] += 2
    asyncio.run(beat.beat(stopped=True))
    first, last = store.heartbeats
    assert (first["committed"], first["stopped"]) == (40, False)
    assert (last["committed"], last["stopped"]) == (42, True)


def test_a_missed_heartbeat_is_logged_not_raised(caplog):
    store = MemoryStore(FakeClock())
    store.fail("heartbeat", psycopg.OperationalError("no connection"))
    beat = Heartbeat(store, logging.getLogger("t"), "w", Counter())
    with caplog.at_level(logging.WARNING):
        asyncio.run(beat.beat())
    [record] = [r for r in caplog.records if r.getMessage() == "heartbeat_failed"]
    assert record.fields["error"] == "no connection"  # type: ignore[attr-defined]


# -- the context and the stats ----------------------------------------------------------


def test_a_context_takes_the_secrets_from_the_settings_and_records_no_phases_by_default():
    ctx = DrainContext(settings(), MemoryStore(FakeClock()), object(), logging.getLogger("t"))  # type: ignore[arg-type]
    assert ctx.secrets == {"drop": None}
    assert ctx.phases is NO_PHASES
    assert (ctx.fence_mode, ctx.commit_timeout_s) == ("all", 10.0)


def test_several_workers_stats_add_up_over_the_longest_run():
    one, two = DrainStats(), DrainStats()
    one.counts.update(committed=10, read=12)
    two.counts.update(committed=5, read=5, log_lines_dropped=1)
    reports = [one.as_json() | {"seconds": 2.0}, two.as_json() | {"seconds": 5.0}]
    total = DrainStats.total(reports)
    assert (total["committed"], total["read"], total["log_lines_dropped"]) == (15, 17, 1)
    assert (total["seconds"], total["committed_per_sec"]) == (5.0, 3.0)


# -- a real webhook over HTTP -------------------------------------------------------------


async def _answer(request: web.Request) -> web.Response:
    """Answers by buyer: yes, no (with a reason), later (503), or too slow."""
    body = await request.json()
    assert request.headers["Idempotency-Key"] == body["idempotency_key"]
    user = body["user_id"]
    if user.startswith("no"):
        return web.json_response({"error": {"message": "card declined"}}, status=402)
    if user.startswith("later"):
        return web.Response(status=503)
    if user.startswith("slow"):
        await asyncio.sleep(1)
    return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/validate", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/validate"
    finally:
        await runner.cleanup()


def over_http(users: list[str], timeout_s: float = 0.5) -> tuple[MemoryStore, Counter[str]]:
    store = MemoryStore(FakeClock())
    counts: Counter[str] = Counter()

    async def run() -> None:
        async with _server() as url:
            store.add_pool("drop", len(users), validation_webhook_url=url)
            for user in users:
                store.claim(user)
            async with WebhookClient(timeout_s=timeout_s) as client:
                # Real time here: the webhook's timeout is a real one.
                ctx = DrainContext(settings(), store, client, logging.getLogger("t"))
                await one_batch(ctx, counts)

    asyncio.run(run())
    return store, counts


def test_over_http_a_2xx_commits():
    store, counts = over_http(["yes-1", "yes-2"])
    assert counts["committed"] == 2 and len(store.ledger) == 2


def test_over_http_a_402_rejects_with_the_webhooks_reason():
    store, counts = over_http(["no-1"])
    assert counts["rejected"] == 1 and store.ledger == {}
    [state] = store.states.values()
    assert (state.state, state.last_error) == ("rejected", "HTTP 402: card declined")
    assert all(u.status == "available" for u in store.units.values())


def test_over_http_a_5xx_is_retried():
    store, counts = over_http(["later-1"])
    assert counts["retried"] == 1
    [state] = store.states.values()
    assert (state.state, state.attempts, state.last_error) == ("queued", 1, "webhook: HTTP 503")


@pytest.mark.timeout(30)
def test_over_http_a_timeout_is_retried_and_the_others_go_on():
    store, counts = over_http(["slow-1", "yes-1"], timeout_s=0.3)
    assert (counts["committed"], counts["retried"]) == (1, 1)
    errors = {state.last_error for state in store.states.values()}
    assert "webhook: timeout after 0.3 s" in errors


# -- the package's shape ------------------------------------------------------------------


def _drain_imports() -> dict[str, set[str]]:
    """Each module of engine/drain and the modules of engine/drain it imports."""
    package = Path(intake_cli.engine.drain.__file__).parent
    found = {}
    for path in package.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "intake_cli.engine.drain":
                    names.update(alias.name for alias in node.names)
                elif node.module.startswith("intake_cli.engine.drain."):
                    names.add(node.module.rsplit(".", 1)[1])
        found[path.stem] = names
    return found


def test_the_drain_package_has_no_import_cycle_and_batches_know_no_loop():
    imports = _drain_imports()
    assert not imports["batch"] & {"worker", "tick"}
    assert not imports["store"] & {"batch", "context", "worker", "tick"}

    def reach(module: str, seen: frozenset[str] = frozenset()) -> None:
        assert module not in seen, f"import cycle through {module}"
        for target in imports.get(module, ()):
            reach(target, seen | {module})

    for module in imports:
        reach(module)
