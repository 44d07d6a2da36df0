"""DB2 can neither crash the drain nor hold it without bound (docs/commit-rpc.md,
"Its answer proves the commit" and "Every wait on DB2 is bounded").

An answer psycopg could not load (nested a thousand levels deep, an integer
of 5,000 digits, bytes that are not UTF-8) proves nothing for its payload and
leaves the rest of the batch committed once. A DB2 that accepts connections
and never answers is seen through a loopback proxy that stops passing bytes:
to intake it is exactly a stopped server (the connection stays up, nothing
comes back), and unlike a SIGSTOP it cannot leave the session's cluster
stopped. A catalog lookup blocked in DB2 is cut by its statement timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from intake_cli.engine.drain import ledger
from intake_cli.engine.drain.worker import Worker
from intake_cli.platform import config
from intake_cli.platform.errors import LedgerUnavailable
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, draining, wait_for
from tests.acceptance.test_commit_rpc import dead_letters, event_with
from tests.conftest import intake, new_database, pool_spec, write_config
from tests.integration.test_ledger import intent

ODD_RPC = ledger.RpcName.parse("public.odd_finalize")
UNREADABLE = "the answer does not prove the commit: it cannot be read"

# What the RPC adds to its proof for the payload marked `odd` (as SQL), and
# how the outcome says why it cannot be read.
ODD_VALUES = {
    "nested-1000-deep": (
        "(repeat('[', 1000) || repeat(']', 1000))::jsonb",
        "nested deeper than 64 levels",
    ),
    "integer-of-5000-digits": (
        "repeat('9', 5000)::jsonb",
        "not readable as JSON here: Exceeds the limit (4300 digits) for integer string",
    ),
    "number-beyond-a-double": (
        "(repeat('9', 400) || '.5')::jsonb",
        "not readable as JSON here: a number too large for a double (402 characters)",
    ),
}


def odd_ledger(dsn: str, returns: str, odd_answer: str, odd: str = "payload ? 'odd'") -> None:
    """The example ledger behind an RPC whose answer for the `odd` payload is `odd_answer`.

    It commits that payload too: the answer alone is at fault.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
        conn.execute(
            f"create function public.odd_finalize(payload jsonb) returns {returns}"
            " language plpgsql as $$ declare answer jsonb := public.finalize_transaction(payload);"
            f" begin if {odd} then return {odd_answer}; end if;"
            f" return answer::{returns}; end $$"
        )


def commit_with_one_odd(dsn: str) -> tuple[list[dict[str, Any]], list[ledger.CommitOutcome]]:
    payloads = [intent(f"user-{n}", unit_no=n) for n in range(1, 5)]
    payloads[2]["odd"] = True

    async def run() -> list[ledger.CommitOutcome]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await ledger.commit_batch(conn, ODD_RPC, payloads, timeout_s=5)

    return payloads, asyncio.run(run())


def tickets(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select idempotency_key::text, count(*) from public.tickets group by 1"
        ).fetchall()
    # A SQL_ASCII database's text comes back as bytes.
    return {key.decode() if isinstance(key, bytes) else key: n for key, n in rows}


def assert_only_the_odd_one_unproven(
    dsn: str, payloads: list[dict[str, Any]], outcomes: list[ledger.CommitOutcome], why: str
) -> None:
    assert [o.ok for o in outcomes] == [True, True, False, True], outcomes
    assert outcomes[2].error.startswith(f"{UNREADABLE} ({why}"), outcomes[2].error
    assert outcomes[2].result is None
    assert {o.result["status"] for o in outcomes if o.ok} == {"committed"}
    # Once each, in the batch statement: nobody was called again.
    assert tickets(dsn) == {p["idempotency_key"]: 1 for p in payloads}


@pytest.mark.parametrize("shape", ODD_VALUES)
def test_an_answer_psycopg_could_not_load_proves_nothing_and_the_batch_commits(db2_dsn, shape):
    # Proof-shaped, with the odd value beside it: the proof cannot be read.
    value, why = ODD_VALUES[shape]
    odd_ledger(db2_dsn, "jsonb", f"answer || jsonb_build_object('x', {value})")

    payloads, outcomes = commit_with_one_odd(db2_dsn)

    assert_only_the_odd_one_unproven(db2_dsn, payloads, outcomes, why)


@pytest.mark.slow
def test_an_answer_that_is_not_utf8_proves_nothing(db2_cluster):
    # A SQL_ASCII database checks no encoding: its text is whatever bytes were put in.
    dsn = new_database(db2_cluster)
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(db2_cluster.dsn_for("postgres"), autocommit=True) as conn:
        conn.execute(f"drop database {name}")
        conn.execute(
            f"create database {name} template template0 encoding 'SQL_ASCII'"
            " lc_collate 'C' lc_ctype 'C'"
        )
    odd_ledger(dsn, "jsonb", "answer || jsonb_build_object('x', E'\\xff\\xfe'::text)")

    payloads, outcomes = commit_with_one_odd(dsn)

    assert_only_the_odd_one_unproven(
        dsn, payloads, outcomes, "not utf-8 text (invalid start byte at byte 7)"
    )


def test_an_unpaired_surrogate_escape_proves_nothing(db2_dsn):
    # json (not jsonb) keeps the escape as written; Python would read it as a
    # string that no UTF-8 writer takes.
    odd_ledger(
        db2_dsn,
        "json",
        """(left(answer::text, -1) || ', "x": "\\ud800"}')::json""",
    )

    payloads, outcomes = commit_with_one_odd(db2_dsn)

    assert_only_the_odd_one_unproven(
        db2_dsn, payloads, outcomes, "an unpaired surrogate escape (\\ud800 to \\udfff alone)"
    )


def test_the_drain_dead_letters_an_unreadable_answer_and_commits_the_rest(
    workdir, db1_dsn, db2_dsn
):
    odd_ledger(
        db2_dsn,
        "jsonb",
        "answer || jsonb_build_object('x', repeat('9', 5000)::jsonb)",
        odd="payload ->> 'user_id' = 'user-2'",
    )
    with WebhookServer() as webhook:
        event = event_with(
            workdir,
            db1_dsn,
            db2_dsn,
            webhook.url,
            5,
            commit_rpc_name=str(ODD_RPC),
            max_retries=0,
        )
        keys = event.claim(5)
        worker = Worker(
            config.load(event.config), db1_dsn, db2_dsn, logging.getLogger("bounds"), once=True
        )
        stats = asyncio.run(worker.run())

    assert (stats.counts["committed"], stats.counts["dead"]) == (4, 1)
    [(state, error, user)] = dead_letters(event)
    assert (state, user) == ("validated", "user-2")
    assert error.startswith(f"commit RPC: {UNREADABLE} (not readable as JSON here: Exceeds")
    assert event.tickets() == {key: 1 for key in keys}
    assert event.units() == {"consumed": 4, "locked": 1}


# -- a DB2 that accepts connections and never answers --------------------------


class FreezingProxy:
    """DB2 on another loopback port, passing bytes both ways until frozen.

    Frozen, it still accepts connections and holds what it receives: a
    client sees a server that is there and says nothing, as when DB2's
    processes are stopped. What it held is dropped, never delivered late.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen:
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def through(proxy: FreezingProxy, dsn: str) -> str:
    """`dsn` by way of the proxy, with a passfile of its own for the proxy's port."""
    info = conninfo_to_dict(dsn)
    passfile = Path(str(info["passfile"]))
    for line in passfile.read_text().splitlines():
        host, port, db, user, password = [*line.split(":", 4), "", "", "", ""][:5]
        if port == str(info["port"]) and user == info["user"]:
            break
    else:
        raise AssertionError("no password for DB2 in its passfile")
    own = passfile.with_name(f"pgpass-proxy-{proxy.port}")
    own.write_text(f"{host}:{proxy.port}:{db}:{user}:{password}\n")
    own.chmod(0o600)
    return make_conninfo(dsn, port=proxy.port, passfile=str(own))


@contextlib.asynccontextmanager
async def frozen_db2(dsn: str) -> AsyncIterator[tuple[FreezingProxy, str]]:
    async with FreezingProxy(int(conninfo_to_dict(dsn)["port"])) as proxy:
        yield proxy, through(proxy, dsn)


@contextlib.contextmanager
def frozen_db2_aside(dsn: str) -> Iterator[tuple[FreezingProxy, str]]:
    """frozen_db2 in a thread of its own, for another process to connect through."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = frozen_db2(dsn)
    try:
        yield asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.slow
def test_a_checkout_from_a_hung_db2_fails_within_the_pool_timeout(ledger_dsn):
    async def run() -> float:
        async with frozen_db2(ledger_dsn) as (proxy, dsn):
            pool = ledger.db2_pool(dsn, 2)
            await pool.open()
            try:
                async with pool.connection() as conn:
                    await conn.execute("select 1")
                proxy.frozen = True

                async def checkout() -> None:
                    async with pool.connection():
                        pass

                started = time.monotonic()
                # Old code: the check waits forever on the pooled connection.
                with pytest.raises(PoolTimeout):
                    await asyncio.wait_for(checkout(), 20)
                return time.monotonic() - started
            finally:
                await pool.close()

    held = asyncio.run(run())
    # The check's CONNECT_TIMEOUT_S, then a new connection that cannot
    # connect in what is left of the pool's 5 s.
    assert held < 7, held


def test_a_commit_on_a_hung_db2_is_db2_unavailable_after_its_timeout_and_the_grace(ledger_dsn):
    payloads = [intent(unit_no=n) for n in range(1, 4)]

    async def run() -> tuple[str, float]:
        async with (
            frozen_db2(ledger_dsn) as (proxy, dsn),
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            proxy.frozen = True
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable) as unavailable:
                await asyncio.wait_for(
                    ledger.commit_batch(
                        conn,
                        ledger.RpcName.parse("public.finalize_transaction"),
                        payloads,
                        timeout_s=0.5,
                    ),
                    20,
                )
            held = time.monotonic() - started
            assert conn.closed
            return str(unavailable.value), held

    message, held = asyncio.run(run())
    assert message == "DB2: no answer within 3.5 s (the connection was closed)"
    assert 3.5 <= held < 4.5, held
    # Nothing reached DB2: the retry, later, commits every payload once.
    assert tickets(ledger_dsn) == {}


@pytest.mark.slow
def test_a_catalog_lookup_on_a_hung_db2_is_db2_unavailable(ledger_dsn):
    async def run() -> tuple[str, float]:
        async with (
            frozen_db2(ledger_dsn) as (proxy, dsn),
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            proxy.frozen = True
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable) as unavailable:
                await asyncio.wait_for(
                    ledger.check_rpc_async(
                        conn, ledger.RpcName.parse("public.finalize_transaction")
                    ),
                    20,
                )
            return str(unavailable.value), time.monotonic() - started

    message, held = asyncio.run(run())
    bound = ledger.LOOKUP_TIMEOUT_S + ledger.ANSWER_GRACE_S
    assert message == f"DB2: no answer within {bound:g} s (the connection was closed)"
    assert bound <= held < bound + 1, held


@pytest.mark.slow
def test_the_drain_takes_a_hung_db2_for_unavailable_and_commits_once_it_answers(
    workdir, db1_dsn, ledger_dsn
):
    with frozen_db2_aside(ledger_dsn) as (proxy, proxied), WebhookServer() as webhook:
        spec = pool_spec("drop", 6, validation_webhook_url=webhook.url, retry_base_seconds=0.2)
        config_path = write_config(workdir, db1_dsn, proxied, [spec])
        intake("up", config=config_path, check=True)
        event = Event(config_path, db1_dsn, ledger_dsn, "drop")
        with draining(event) as [proc]:
            first = event.claim(3, prefix="early")
            wait_for(lambda: len(event.tickets()) == 3, 30, "the first commits")
            # The drain's pool now holds a connection to DB2, which stops answering.
            proxy.frozen = True
            log = proc.log  # type: ignore[attr-defined]
            seen = len(Path(log.name).read_text())
            frozen_at = time.monotonic()
            later = event.claim(3, prefix="late")
            # Old code: the check on checkout waits forever; nothing is retried.
            wait_for(
                lambda: "DB2 unavailable" in Path(log.name).read_text()[seen:],
                20,
                "the commit to give up on DB2",
                interval=0.1,
            )
            # The webhook's call, then the checkout's check (3 s) and the
            # pool's timeout (5 s in all).
            assert time.monotonic() - frozen_at < 10
            proxy.frozen = False
            wait_for(lambda: len(event.tickets()) == 6, 30, "the retried commits")
    assert event.tickets() == {key: 1 for key in first + later}
    assert event.units() == {"consumed": 6}


# -- a catalog lookup that DB2 runs but cannot finish --------------------------


@contextlib.contextmanager
def catalog_locked(dsn: str, hold_s: float) -> Iterator[None]:
    """pg_proc locked in DB2 (this database's own copy) until the block ends, `hold_s` at most."""
    taken, released = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("lock table pg_catalog.pg_proc in access exclusive mode")
            taken.set()
            released.wait(hold_s)

    locker = threading.Thread(target=hold)
    locker.start()
    try:
        assert taken.wait(10)
        yield
    finally:
        released.set()
        locker.join()


def test_the_first_rpc_lookup_runs_with_a_statement_timeout(ledger_dsn, monkeypatch):
    monkeypatch.setattr(ledger, "LOOKUP_TIMEOUT_S", 0.5, raising=False)
    rpc = ledger.RpcName.parse("public.finalize_transaction")

    async def lookup(conn: psycopg.AsyncConnection) -> tuple[Any, float]:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable) as unavailable:
            await ledger.check_rpc_async(conn, rpc)
        return unavailable.value, time.monotonic() - started

    async def run() -> tuple[Any, float]:
        async with await psycopg.AsyncConnection.connect(ledger_dsn, autocommit=True) as conn:
            # Old code: waits the whole 8 s for the lock, then succeeds.
            with catalog_locked(ledger_dsn, 8):
                return await lookup(conn)

    error, held = asyncio.run(run())
    assert str(error).startswith("DB2: 57014: canceling statement due to statement timeout")
    assert held < 2, held

    # `up` and `config set` look it up the same way.
    with psycopg.connect(ledger_dsn, autocommit=True) as conn, catalog_locked(ledger_dsn, 8):
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="57014"):
            ledger.check_rpc(conn, rpc)
        with pytest.raises(psycopg.errors.QueryCanceled):
            ledger.example_installed(conn)
        assert time.monotonic() - started < 3


@pytest.fixture
def ledger_dsn(db2_dsn: str) -> str:
    with psycopg.connect(db2_dsn, autocommit=True) as conn:
        assert ledger.install_example(conn) is True
    return db2_dsn
