"""DB2, the core ledger: its commit RPC, checked, called, and the example that `intake up` installs.

The contract with DB2 is one function taking the intent as JSON and idempotent
on the intent's key. intake never writes DB2's tables itself, so any ledger
that offers such a function can sit behind the engine.

The RPC's name comes from configuration. It is checked against a strict
pattern, looked up in the catalog with bound parameters, and reaches SQL text
only as an identifier quoted by psycopg.sql.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from intake_cli.config import check_rpc_name
from intake_cli.errors import ConnectionFailed, LedgerContractError, LedgerUnavailable
from intake_cli.sqlfiles import queries, render

EXAMPLE_RPC = "public.finalize_transaction"

ArgType = Literal["jsonb", "json"]
_ARG_TYPES: tuple[ArgType, ...] = ("jsonb", "json")


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
    """What the RPC said about one payload: its result, or why it refused."""

    ok: bool
    error: str | None
    result: Any


# ---------------------------------------------------------------------------
# The example ledger


def example_installed(conn: psycopg.Connection) -> bool:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(_q("example_installed")).fetchone()
    return bool(row and row[0])


def install_example(conn: psycopg.Connection) -> bool:
    """Install the example ledger in one transaction; False (and nothing done) if present.

    Presence is judged by public.finalize_transaction alone: a DB2 that has
    one is somebody's ledger, which intake must not touch.
    """
    try:
        with conn.transaction():
            if example_installed(conn):
                return False
            # The ledger's grants and policy name Supabase's roles and
            # auth.uid(); on plain PostgreSQL they are created first.
            conn.execute(render("common/supabase_compat.sql"))
            conn.execute(render("db2/example_ledger.sql"))
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


# ---------------------------------------------------------------------------
# Checking the contract


@dataclass(frozen=True)
class _Overload:
    signature: str
    kind: str
    returns_set: bool
    nargs: int
    ndefaults: int
    first_arg_type: str | None
    executable: bool
    role: str

    @property
    def takes_one_json(self) -> bool:
        return (
            self.nargs >= 1
            and self.nargs - self.ndefaults <= 1
            and self.first_arg_type in _ARG_TYPES
        )


def _judge(rpc: RpcName, rows: Iterable[tuple[Any, ...]]) -> RpcName:
    """The RPC as it must be called, or a LedgerContractError saying what DB2 has instead."""
    overloads = [_Overload(*row) for row in rows]
    if not overloads:
        raise LedgerContractError(
            f"DB2 has no function {rpc}(jsonb): install it, or set commit_rpc_name"
        )
    fitting = [o for o in overloads if o.takes_one_json]
    callable_ = [o for o in fitting if o.kind == "f" and not o.returns_set]
    if not callable_:
        have = "; ".join(_explain(o) for o in overloads)
        raise LedgerContractError(
            f"DB2's {rpc} cannot be the commit RPC: intake calls {rpc}(payload jsonb) "
            f"(or json), one argument, returning one value per call. DB2 has: {have}"
        )
    # jsonb first: it is what the payloads are sent as, so no cast is needed.
    best = min(callable_, key=lambda o: _ARG_TYPES.index(o.first_arg_type))  # type: ignore[arg-type]
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
    return o.signature


def check_rpc(conn: psycopg.Connection, rpc: RpcName) -> RpcName:
    """Raise LedgerContractError unless DB2 offers `rpc` taking one jsonb (or json) argument.

    Returns the RpcName with the argument type the function takes; commit_batch
    needs it only for a function declared with json rather than jsonb.
    """
    try:
        with conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(
                _q("rpc_overloads"), {"schema": rpc.schema, "name": rpc.name}
            ).fetchall()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise LedgerUnavailable(f"DB2: {_describe(exc)}") from None
    return _judge(rpc, rows)


async def check_rpc_async(conn: psycopg.AsyncConnection, rpc: RpcName) -> RpcName:
    """check_rpc for the drain worker's asynchronous connections."""
    try:
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(_q("rpc_overloads"), {"schema": rpc.schema, "name": rpc.name})
            rows = await cur.fetchall()
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


def _unavailable(exc: BaseException) -> bool:
    """The connection, not the data, is the problem: retrying the commit later may succeed.

    Deadlocks and serialization failures (SQLSTATE class 40) are
    OperationalErrors too, each its own class rather than a subclass of
    TransactionRollback, but the server is fine: retried payload by payload,
    they go through.
    """
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40"):
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


async def _fetch(
    conn: psycopg.AsyncConnection, query: sql.Composable, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    # An autocommit statement is its own transaction, without the two extra
    # round trips of BEGIN and COMMIT; otherwise the transaction is explicit.
    async with conn.cursor(row_factory=tuple_row) as cur:
        if conn.autocommit:
            await cur.execute(query, params)
            return await cur.fetchall()
        async with conn.transaction():
            await cur.execute(query, params)
            return await cur.fetchall()


def _compose(name: str, rpc: RpcName) -> sql.Composable:
    return sql.SQL(_q(name)).format(rpc=rpc.identifier(), arg_type=sql.SQL(rpc.arg_type))


async def commit_batch(
    conn: psycopg.AsyncConnection, rpc: RpcName, payloads: list[dict[str, Any]]
) -> list[CommitOutcome]:
    """Call the RPC for every payload; one outcome per payload, in order.

    All of them in one statement first. If DB2 refuses that transaction, one
    payload may be to blame, so each is then retried in its own transaction
    and the others still commit. Raises LedgerUnavailable when DB2 cannot be
    reached: nothing is known to be committed then, and retrying is safe
    because the RPC is idempotent.
    """
    if not payloads:
        return []
    if conn.closed:
        raise LedgerUnavailable("DB2: the connection is closed")
    try:
        rows = await _fetch(
            conn, _compose("commit_batch", rpc), {"payloads": [Jsonb(p) for p in payloads]}
        )
    except psycopg.Error as exc:
        if _unavailable(exc):
            raise LedgerUnavailable(f"DB2: {_describe(exc)}") from exc
    else:
        results = dict(rows)
        if len(results) == len(payloads):
            return [CommitOutcome(True, None, results[i]) for i in range(1, len(payloads) + 1)]
        # Unreachable for a function returning one value, which check_rpc
        # ensures; should DB2 change under us, the slow path still answers.

    one = _compose("commit_one", rpc)
    outcomes = []
    for payload in payloads:
        try:
            rows = await _fetch(conn, one, {"payload": Jsonb(payload)})
        except psycopg.Error as exc:
            if _unavailable(exc):
                # Items already committed here commit again as duplicates.
                raise LedgerUnavailable(f"DB2: {_describe(exc)}") from exc
            outcomes.append(CommitOutcome(False, _describe(exc), None))
        else:
            outcomes.append(CommitOutcome(True, None, rows[0][0] if rows else None))
    return outcomes
