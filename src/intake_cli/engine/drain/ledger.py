"""DB2, the core ledger: its commit RPC, checked, called, and the example that `intake up` installs.

The contract with DB2 is one function taking the intent as JSON, idempotent
on the intent's key, and answering with proof of the commit: a JSON object
whose `idempotency_key` is the payload's and whose `status` is `committed`
(this call wrote it) or `duplicate` (an earlier call did). intake never
writes DB2's tables itself, so any ledger that offers such a function can sit
behind the engine; an answer that proves nothing never counts as a sale.

The RPC's name comes from configuration. It is checked against a strict
pattern, looked up in the catalog with bound parameters, and reaches SQL text
only as an identifier quoted by psycopg.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from intake_cli.platform.config import check_rpc_name
from intake_cli.platform.errors import ConnectionFailed, LedgerContractError, LedgerUnavailable
from intake_cli.platform.jsontext import dump_ascii, read_json
from intake_cli.platform.pgconn import async_pool
from intake_cli.platform.sqlfiles import queries, render

# Every statement intake runs on DB2 is bounded (docs/commit-rpc.md, "Every
# wait on DB2 is bounded"). Connecting, and the check on checkout (an empty
# query: no slower than connecting), may take this long.
CONNECT_TIMEOUT_S = 3
# The catalog lookups (the commit RPC's overloads, the example's presence):
# DB2's statement timeout for each.
LOOKUP_TIMEOUT_S = 3
# Each statement that installs or upgrades the example ledger (`intake up`).
INSTALL_TIMEOUT_S = 30
# How long past a statement's own timeout intake still waits for DB2's
# answer before it takes DB2 for hung and closes the connection.
ANSWER_GRACE_S = 3


def db2_pool(dsn: str, max_size: int) -> AsyncConnectionPool:
    """DB2's connections for a drain (worker or tick), not yet opened.

    DB2 may be down for a while: a connection is checked before use and a
    missing server fails fast, so that the commit is retried later instead
    of a batch waiting on it. A DB2 that accepts connections and never
    answers fails as fast: the check is bounded too (_check).
    """
    return async_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        open=False,
        timeout=5,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        check=_check,
        reconnect_timeout=0,
    )


async def _check(conn: psycopg.AsyncConnection) -> None:
    """The pool's check on checkout, which fails unless DB2 answers within CONNECT_TIMEOUT_S."""
    async with _answered_within(conn, CONNECT_TIMEOUT_S):
        await AsyncConnectionPool.check_connection(conn)


@contextlib.asynccontextmanager
async def _answered_within(
    conn: psycopg.AsyncConnection, seconds: float | None
) -> AsyncIterator[None]:
    """Close the connection if DB2 has not answered within `seconds`: DB2 is hung.

    Nothing else ends a wait on a server that accepts and never answers (a
    stopped process, a dead peer behind a live proxy): it runs no statement
    timeout, its kernel still acknowledges TCP keepalives, and cancelling
    the wait makes psycopg send a cancel request and wait for the query to
    end, up to 10 s more. Shutting the socket down wakes psycopg at once to
    a lost connection, which the pool discards. LedgerUnavailable then.
    """
    if seconds is None:
        yield
        return
    severed = False

    def sever() -> None:
        nonlocal severed
        severed = True
        _shut_down(conn)

    timer = asyncio.get_running_loop().call_later(seconds, sever)
    try:
        yield
    except psycopg.Error as exc:
        if severed:
            raise LedgerUnavailable(
                f"DB2: no answer within {seconds:g} s (the connection was closed)"
            ) from exc
        raise
    finally:
        timer.cancel()


def _shut_down(conn: psycopg.AsyncConnection) -> None:
    # fromfd works on a duplicate of the descriptor, which psycopg keeps;
    # shutdown acts on the socket itself, whichever descriptor names it.
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)


EXAMPLE_RPC = "public.finalize_transaction"

ArgType = Literal["jsonb", "json"]
_ARG_TYPES: tuple[ArgType, ...] = ("jsonb", "json")
# What the RPC's answer says of a payload it committed: this call or an earlier one.
PROOF_STATUSES = ("committed", "duplicate")
PROOF_SHAPE = '{"idempotency_key": <the payload\'s>, "status": "committed" or "duplicate"}'


def _q(name: str) -> str:
    return queries("db2")[name]


@dataclass(frozen=True)
class RpcName:
    """A commit RPC, `schema.name`, and the JSON type its one argument takes."""

    schema: str
    name: str
    # What the payload is cast to in the call; check_rpc finds out which one
    # the function takes (jsonb unless the function only accepts json).
    arg_type: ArgType = "jsonb"

    def __post_init__(self) -> None:
        # Constructed directly or via parse: either way nothing unchecked gets
        # near SQL text, even though identifier() would quote it.
        if reason := check_rpc_name(f"{self.schema}.{self.name}"):
            raise LedgerContractError(f"commit RPC name: {reason}")
        if self.arg_type not in _ARG_TYPES:
            raise LedgerContractError(f"commit RPC argument type: {self.arg_type!r} is not json")

    @classmethod
    def parse(cls, text: str) -> RpcName:
        """`schema.name` or `name` (schema public), lower-case identifiers only."""
        if not isinstance(text, str):
            raise LedgerContractError(f"commit RPC name: expected a string, got {text!r}")
        if reason := check_rpc_name(text):
            raise LedgerContractError(f"commit RPC name: {reason}")
        schema, _, name = text.rpartition(".")
        return cls(schema or "public", name)

    def identifier(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def with_arg_type(self, arg_type: ArgType) -> RpcName:
        return RpcName(self.schema, self.name, arg_type)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class CommitOutcome:
    """What the RPC said about one payload: ok only when its answer proves the commit."""

    ok: bool
    error: str | None
    result: Any


# ---------------------------------------------------------------------------
# The example ledger


def example_installed(conn: psycopg.Connection) -> bool:
    """Whether DB2 has a public.finalize_transaction that needs nothing from intake."""
    if _example_outdated(conn) or _example_superseded(conn):
        return False
    return _found(conn, "example_installed")


def install_example(conn: psycopg.Connection) -> bool:
    """Install the example ledger in one transaction; False (and nothing done) if present.

    Presence is judged by public.finalize_transaction alone: a DB2 that has
    one is somebody's ledger, which intake must not touch. The exceptions
    are the example's own RPC exactly as an earlier intake installed it (known
    by its body): the one whose answer did not yet prove the commit, and the
    one that wrote each ticket twice (two Realtime events per commit). It is
    replaced in place, the legacy orders get Row Level Security, and True is
    returned.
    """
    # After the lookups, which set their own (shorter) timeout for the rest
    # of this transaction.
    install_timeout = _timeout_sql(INSTALL_TIMEOUT_S * 1000)
    try:
        with conn.transaction():
            if _example_outdated(conn) or _example_superseded(conn):
                conn.execute(install_timeout)
                conn.execute(render("db2/example_upgrade.sql"))
                return True
            if example_installed(conn):
                return False
            conn.execute(install_timeout)
            # The ledger's grants and policy name Supabase's roles and
            # auth.uid(); on plain PostgreSQL they are created first.
            conn.execute(render("common/supabase_compat.sql"))
            conn.execute(render("db2/example_ledger.sql"))
    except psycopg.errors.QueryCanceled as exc:
        raise ConnectionFailed(
            "DB2: the example ledger was not installed within its statement timeout "
            f"({INSTALL_TIMEOUT_S} s a statement) and nothing was changed: {_describe(exc)}"
        ) from None
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(
            f"DB2: the connection failed while installing the example ledger: {_describe(exc)}"
        ) from None
    except psycopg.Error as exc:
        raise LedgerContractError(
            "DB2: the example ledger could not be installed and nothing was changed "
            f"(it needs a database without its tables): {_describe(exc)}"
        ) from None
    return True


def _example_superseded(conn: psycopg.Connection) -> bool:
    return _found(conn, "example_superseded")


def _example_outdated(conn: psycopg.Connection) -> bool:
    return _found(conn, "example_outdated")


def _found(conn: psycopg.Connection, name: str) -> bool:
    rows = _lookup(conn, name)
    return bool(rows and rows[0][0])


def _lookup_sql(name: str) -> sql.Composed:
    """A catalog lookup, led by its statement timeout (see _commit_sql for the form)."""
    return sql.SQL("{}; {}").format(_timeout_sql(round(LOOKUP_TIMEOUT_S * 1000)), sql.SQL(_q(name)))


def _lookup(
    conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows of a catalog lookup on a synchronous connection (`up`, `config set`).

    Bounded by DB2 (LOOKUP_TIMEOUT_S), not by a client-side deadline: these
    commands run in the foreground, where an operator sees a DB2 that does
    not answer at all.
    """
    with psycopg.ClientCursor(conn, row_factory=tuple_row) as cur:
        if conn.autocommit:
            cur.execute(_lookup_sql(name), params)
        else:
            with conn.transaction():
                cur.execute(_lookup_sql(name), params)
        while cur.nextset():
            pass
        return cur.fetchall()


# ---------------------------------------------------------------------------
# Checking the contract


# Where PostgreSQL keeps its own functions: none of them commits an intent,
# and pg_catalog.jsonb_typeof(jsonb) would pass for one by its signature.
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class _Overload:
    signature: str
    kind: str
    returns_set: bool
    nargs: int
    ndefaults: int
    first_arg_type: str | None
    return_type: str
    outdated_example: bool
    executable: bool
    role: str

    @property
    def takes_one_json(self) -> bool:
        return (
            self.nargs >= 1
            and self.nargs - self.ndefaults <= 1
            and self.first_arg_type in _ARG_TYPES
        )

    @property
    def answers_json(self) -> bool:
        return self.return_type in _ARG_TYPES and not self.returns_set


def _system_schema(schema: str) -> bool:
    # pg_* names are reserved for the system (pg_toast, pg_temp_N, ...).
    return schema in _SYSTEM_SCHEMAS or schema.startswith("pg_")


def _judge(rpc: RpcName, rows: Iterable[tuple[Any, ...]]) -> RpcName:
    """The RPC as it must be called, or a LedgerContractError saying what DB2 has instead."""
    overloads = [_Overload(*row) for row in rows]
    if not overloads:
        raise LedgerContractError(
            f"DB2 has no function {rpc}(jsonb): install it, or set commit_rpc_name"
        )
    fitting = [o for o in overloads if o.takes_one_json]
    callable_ = [o for o in fitting if o.kind == "f" and o.answers_json]
    if not callable_:
        have = "; ".join(_explain(o) for o in overloads)
        raise LedgerContractError(
            f"DB2's {rpc} cannot be the commit RPC: intake calls {rpc}(payload jsonb) "
            f"(or json), one argument, and needs one json or jsonb answer per call, "
            f"{PROOF_SHAPE}. DB2 has: {have}"
        )
    # jsonb first: it is what the payloads are sent as, so no cast is needed.
    best = min(callable_, key=lambda o: _ARG_TYPES.index(o.first_arg_type))
    if best.outdated_example:
        raise LedgerContractError(
            f"DB2's {best.signature} is intake's example ledger from before its answer "
            "proved the commit: run `intake up` with db2.install_example_ledger: true "
            "to replace it (the tickets stay)"
        )
    if not best.executable:
        raise LedgerContractError(
            f"DB2: role {best.role} may not execute {best.signature}: "
            f"grant execute on function {best.signature} to {best.role}"
        )
    return rpc.with_arg_type(best.first_arg_type)  # type: ignore[arg-type]


def _explain(o: _Overload) -> str:
    if o.kind == "p":
        return f"{o.signature} (a procedure)"
    if o.kind in ("a", "w"):
        return f"{o.signature} (an aggregate)"
    if o.takes_one_json and o.returns_set:
        return f"{o.signature} (returns a set)"
    if o.takes_one_json and not o.answers_json:
        return f"{o.signature} (returns {o.return_type})"
    return o.signature


def _refuse_system(rpc: RpcName) -> None:
    if _system_schema(rpc.schema):
        raise LedgerContractError(
            f"{rpc} cannot be the commit RPC: {rpc.schema} is PostgreSQL's own schema; "
            f"name your ledger's function taking (payload jsonb) and answering {PROOF_SHAPE}"
        )


def check_rpc(conn: psycopg.Connection, rpc: RpcName) -> RpcName:
    """Raise LedgerContractError unless DB2 offers `rpc` with the commit RPC's shape.

    The shape: a function (not a procedure or an aggregate) outside the system
    schemas, taking one jsonb (or json) argument and returning one jsonb (or
    json) value. Returns the RpcName with the argument type the function
    takes; commit_batch needs it only for a function declared with json.
    """
    _refuse_system(rpc)
    try:
        rows = _lookup(conn, "rpc_overloads", {"schema": rpc.schema, "name": rpc.name})
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailable(f"DB2: {_describe(exc)}") from None
    return _judge(rpc, rows)


async def check_rpc_async(conn: psycopg.AsyncConnection, rpc: RpcName) -> RpcName:
    """check_rpc for the drain worker's asynchronous connections.

    Bounded like every statement of the drain: DB2 cancels the lookup after
    LOOKUP_TIMEOUT_S, and a DB2 that has not answered ANSWER_GRACE_S later
    is taken for hung (LedgerUnavailable either way).
    """
    _refuse_system(rpc)
    try:
        async with _answered_within(conn, LOOKUP_TIMEOUT_S + ANSWER_GRACE_S):
            rows = await _fetch(
                conn, _lookup_sql("rpc_overloads"), {"schema": rpc.schema, "name": rpc.name}
            )
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailable(f"DB2: {_describe(exc)}") from None
    return _judge(rpc, rows)


# ---------------------------------------------------------------------------
# Committing


def _describe(exc: BaseException) -> str:
    """One line an operator can read: SQLSTATE, message, and the server's detail."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
        if exc.diag.message_detail:
            text += f" ({exc.diag.message_detail})"
        return f"{exc.sqlstate}: {text}" if exc.sqlstate else text
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _connection_lost(conn: psycopg.AsyncConnection) -> bool:
    """After an error: is the connection gone (DB2 unavailable), or still usable?

    The connection's state tells, not the error's SQLSTATE: a statement
    timeout (57014), a deadlock (40P01) or a lock timeout is an
    OperationalError on a connection that is fine, and the payload's own
    problem; only a connection that closed or broke says DB2 went away.
    """
    return conn.closed or conn.broken


def _commit_sql(name: str, rpc: RpcName, timeout_ms: int | None) -> sql.Composed:
    """The commit statement, led by its statement timeout when there is one.

    `SET LOCAL` in the same query string as the call: the string runs as one
    implicit transaction, so the setting ends with it (nothing leaks into the
    next transaction on the connection, which behind a transaction-mode
    pooler may be somebody else's), and it costs no round trip of its own.
    PostgreSQL 13 and later time each statement of such a string separately,
    so the timeout bounds the call that follows it.
    """
    call = sql.SQL(_q(name)).format(rpc=rpc.identifier(), arg_type=sql.SQL(rpc.arg_type))
    if timeout_ms is None:
        return call
    return sql.SQL("{}; {}").format(_timeout_sql(timeout_ms), call)


def _timeout_sql(timeout_ms: int) -> sql.Composed:
    return sql.SQL("set local statement_timeout = {}").format(sql.Literal(timeout_ms))


async def _fetch(
    conn: psycopg.AsyncConnection, query: sql.Composed, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    # Bound on the client and sent as one simple query: several statements
    # in one round trip, and never a prepared statement (a transaction-mode
    # pooler may hand the next transaction to another server connection).
    # An autocommit string is its own transaction, without the two extra
    # round trips of BEGIN and COMMIT; otherwise the transaction is explicit.
    async with psycopg.AsyncClientCursor(conn, row_factory=tuple_row) as cur:
        _answers_as_bytes(cur)
        if conn.autocommit:
            await cur.execute(query, params)
        else:
            async with conn.transaction():
                await cur.execute(query, params)
        # The call's rows are the last result (after the SET's, if any).
        while cur.nextset():
            pass
        return await cur.fetchall()


class _JsonBytes(Loader):
    """json and jsonb as the bytes DB2 sent, for _read_answer to read."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def _answers_as_bytes(cur: psycopg.AsyncCursor[Any]) -> None:
    """Leave the RPC's answers unread by psycopg, whose JSON loader raises.

    An answer nested a thousand levels deep, an integer of 5,000 digits,
    bytes that are not UTF-8 (a SQL_ASCII database passes them) would make
    psycopg raise while the rows are read: the whole batch, and the drain,
    would fail on one payload's answer.
    """
    for name in _ARG_TYPES:
        cur.adapters.register_loader(name, _JsonBytes)


def _read_answer(raw: bytes | None, encoding: str) -> tuple[Any, str | None]:
    """The RPC's answer as a value, or (None, why it cannot be read)."""
    if raw is None:
        return None, None
    try:
        # psycopg's "ascii" is SQL_ASCII, which checks nothing: JSON is UTF-8.
        text = raw.decode("utf-8" if encoding == "ascii" else encoding)
    except UnicodeDecodeError as exc:
        return None, f"not {exc.encoding} text ({exc.reason} at byte {exc.start})"
    answer, unreadable = read_json(text)
    if unreadable is None and "\\u" in text:
        # json (not jsonb) keeps "\ud800" as written, and Python reads it as
        # a string that nothing can write as UTF-8: a log, DB1, a terminal.
        try:
            json.dumps(answer, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return None, "an unpaired surrogate escape (\\ud800 to \\udfff alone)"
    return answer, unreadable


def _proof(payload: dict[str, Any], answer: Any) -> str | None:
    """None when the RPC's answer proves this payload committed; else what it lacks."""
    key = payload.get("idempotency_key") if isinstance(payload, dict) else None
    if (
        isinstance(answer, dict)
        and isinstance(answer.get("idempotency_key"), str)
        and isinstance(key, str)
        and answer["idempotency_key"].lower() == key.lower()
        and answer.get("status") in PROOF_STATUSES
    ):
        return None
    shown = json.dumps(answer, default=str, ensure_ascii=True)
    if len(shown) > 200:
        shown = shown[:200] + "…"
    return f"the answer does not prove the commit: expected {PROOF_SHAPE}, got {shown}"


def _outcome(payload: dict[str, Any], raw: bytes | None, encoding: str) -> CommitOutcome:
    answer, unreadable = _read_answer(raw, encoding)
    if unreadable:
        # Proves nothing: the intent is retried, then dead-lettered, as for
        # any answer without the proof; the other payloads are not touched.
        problem: str | None = (
            f"the answer does not prove the commit: it cannot be read ({unreadable})"
        )
        return CommitOutcome(False, problem, None)
    problem = _proof(payload, answer)
    return CommitOutcome(problem is None, problem, answer)


def _refusal(exc: psycopg.Error, timeout_ms: int | None) -> str:
    text = _describe(exc)
    if isinstance(exc, psycopg.errors.QueryCanceled) and timeout_ms is not None:
        text += f" (the call ran past db2.commit_timeout_seconds, {timeout_ms / 1000:g} s)"
    return text


async def commit_batch(
    conn: psycopg.AsyncConnection,
    rpc: RpcName,
    payloads: list[dict[str, Any]],
    *,
    timeout_s: float | None = None,
) -> list[CommitOutcome]:
    """Call the RPC for every payload; one outcome per payload, in order.

    All of them in one statement first. If DB2 refuses that statement, one
    payload may be to blame, so each is then retried in its own transaction
    and the others still commit. An outcome is ok only when the RPC's answer
    proves the commit (PROOF_SHAPE). Raises LedgerUnavailable when the
    connection to DB2 is lost: nothing is known to be committed then, and
    retrying is safe because the RPC is idempotent.

    `timeout_s` (None: DB2's own statement_timeout) is what one payload may
    cost its batch in all, never more (docs/commit-rpc.md, "The statement
    timeout"). DB2 cancels the batch statement after `timeout_s`. The
    payloads that answered before the statement failed were not at fault:
    each is retried alone with a `timeout_s` of its own, first. The payload
    DB2 was calling when it failed is charged the statement's time less what
    those took again alone, and is retried alone only with what is left of
    its `timeout_s` (after a call that never returns: nothing, so it fails
    then and there). The payloads DB2 never reached get a `timeout_s` each.

    DB2 that has not answered a statement ANSWER_GRACE_S after its timeout
    is taken for hung: the connection is closed, LedgerUnavailable. An
    answer that cannot be read (_read_answer) proves nothing, like any
    answer without the proof.
    """
    if not payloads:
        return []
    if conn.closed:
        raise LedgerUnavailable("DB2: the connection is closed")
    timeout_ms = None if timeout_s is None else max(1, round(timeout_s * 1000))
    encoding = conn.info.encoding
    answers: dict[int, bytes | None] = {}
    started = time.monotonic()
    try:
        async with _answered_within(conn, _deadline_s(timeout_ms)):
            await _stream_batch(conn, rpc, payloads, timeout_ms, answers)
    except psycopg.Error as exc:
        if _connection_lost(conn):
            raise LedgerUnavailable(f"DB2: {_describe(exc)}") from exc
        failure: psycopg.Error | None = exc
    else:
        if len(answers) == len(payloads):
            return [_outcome(p, answers[i], encoding) for i, p in enumerate(payloads, start=1)]
        # Unreachable for a function returning one value, which check_rpc
        # ensures; should DB2 change under us, the slow path still answers.
        failure = None
    spent_ms = (time.monotonic() - started) * 1000
    culprit = _culprit(payloads, answers) if failure is not None else None

    outcomes: dict[int, CommitOutcome] = {}

    async def alone(ord_: int, budget_ms: int | None) -> float:
        """Commit one payload in its own transaction; the milliseconds it took."""
        payload = payloads[ord_ - 1]
        began = time.monotonic()
        try:
            async with _answered_within(conn, _deadline_s(budget_ms)):
                rows = await _fetch(
                    conn, _commit_sql("commit_one", rpc, budget_ms), {"payload": Jsonb(payload)}
                )
        except psycopg.Error as exc:
            if _connection_lost(conn):
                # Items already committed here commit again as duplicates.
                raise LedgerUnavailable(f"DB2: {_describe(exc)}") from exc
            outcomes[ord_] = CommitOutcome(False, _refusal(exc, timeout_ms), None)
        else:
            outcomes[ord_] = _outcome(payload, rows[0][0] if rows else None, encoding)
        return (time.monotonic() - began) * 1000

    # Those that answered in the statement first: the time they take again,
    # alone, is about their share of it, and the rest was the culprit's.
    answered_ms = 0.0
    for ord_ in sorted(answers):
        answered_ms += await alone(ord_, timeout_ms)
    if culprit is not None and failure is not None:
        budget_ms = timeout_ms
        if timeout_ms is not None:
            budget_ms = round(min(timeout_ms, timeout_ms - (spent_ms - answered_ms)))
        if budget_ms is not None and budget_ms < MIN_RETRY_MS:
            # Its share of the batch statement was its whole allowance.
            outcomes[culprit] = CommitOutcome(False, _refusal(failure, timeout_ms), None)
        else:
            await alone(culprit, budget_ms)
    for ord_ in range(1, len(payloads) + 1):
        if ord_ not in outcomes:
            await alone(ord_, timeout_ms)
    return [outcomes[ord_] for ord_ in range(1, len(payloads) + 1)]


# A payload left with less of its timeout than this is not called again.
MIN_RETRY_MS = 10


def _deadline_s(timeout_ms: int | None) -> float | None:
    """How long intake waits for a commit statement's answer: its timeout, then the grace."""
    return None if timeout_ms is None else timeout_ms / 1000 + ANSWER_GRACE_S


def _call_order(payloads: list[dict[str, Any]]) -> list[int]:
    """The payloads' ordinals (from 1) in the order the commit_batch query calls the RPC.

    The query orders by `payload ->> 'idempotency_key'` (NULLs last), then
    by position. Python's order of the keys is DB2's for the keys intake
    sends (UUIDs, lower case, in any collation); for others _culprit checks
    it against the answers that came back.
    """

    def key(ord_: int) -> tuple[int, str, int]:
        payload = payloads[ord_ - 1]
        value = payload.get("idempotency_key") if isinstance(payload, dict) else None
        if value is None:
            return (1, "", ord_)
        return (0, value if isinstance(value, str) else json.dumps(value), ord_)

    return sorted(range(1, len(payloads) + 1), key=key)


def _culprit(payloads: list[dict[str, Any]], answers: dict[int, Any]) -> int | None:
    """The ordinal of the payload DB2 was calling when the batch statement failed.

    The answers stream back in call order, each as soon as DB2 sends it, and
    an error ends the stream only after the rows before it: the culprit is
    the first payload in call order without an answer. None when the
    answers are not a prefix of the order this side expects (keys DB2's
    collation orders otherwise): every payload is then retried in full.
    """
    order = _call_order(payloads)
    if set(order[: len(answers)]) != answers.keys():
        return None
    return order[len(answers)] if len(answers) < len(order) else None


async def _stream_batch(
    conn: psycopg.AsyncConnection,
    rpc: RpcName,
    payloads: list[dict[str, Any]],
    timeout_ms: int | None,
    answers: dict[int, bytes | None],
) -> None:
    """The batch statement, its answers put in `answers` (by ordinal) as they arrive.

    Streamed (libpq's single-row mode), so that when the statement fails the
    answers before the failure are known, and with them the payload at
    fault. A streamed statement is sent alone (extended protocol), so its
    timeout is set by a `SET LOCAL` of its own in an explicit transaction:
    two round trips more than one simple query, on a path that calls the
    RPC for the whole batch.
    """
    query = sql.SQL(_q("commit_batch")).format(rpc=rpc.identifier(), arg_type=sql.SQL(rpc.arg_type))
    # One JSON array: dumped in one call, where a jsonb[] literal quotes
    # every element in Python (sql/queries/db2.sql).
    params = {"payloads": Jsonb(payloads, dumps=dump_ascii)}

    async def stream() -> None:
        async with conn.cursor(row_factory=tuple_row) as cur:
            _answers_as_bytes(cur)
            async for ord_, answer in cur.stream(query, params):
                answers[int(ord_)] = answer

    if not conn.autocommit:
        async with conn.transaction():
            if timeout_ms is not None:
                await conn.execute(_timeout_sql(timeout_ms))
            await stream()
        return
    if timeout_ms is None:
        # Autocommit: the statement is its own transaction.
        await stream()
        return
    # Bound on the client, one simple query: BEGIN and the SET in one round trip.
    async with psycopg.AsyncClientCursor(conn) as cur:
        await cur.execute(sql.SQL("begin; {}").format(_timeout_sql(timeout_ms)))
    try:
        await stream()
        await conn.execute("commit")
    except psycopg.Error:
        if not _connection_lost(conn) and conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.execute("rollback")
        raise
