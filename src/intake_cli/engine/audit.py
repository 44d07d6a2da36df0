"""`intake audit`: does DB2's ledger agree with what DB1 knows it sold?

After a failover of DB1 with asynchronous replication, the drain may have
committed to DB2 intents the promoted standby never received; the rebuild
then hands their units out again, and nothing on DB1 alone can see it. Only
DB2's ledger can: this module compares the two, per pool.

intake's contract with DB2 is the commit RPC; it never reads DB2's tables on
its own. What DB2 sold comes from a view or function the operator names
(`db2.sold_query`), returning rows (idempotency_key, resource_id, pool_id),
or, where intake's example ledger is in use, from its public.tickets.

A big event is not loaded into Python: DB2's rows are read once, as a
read-only COPY stream, straight into a temporary table on DB1, and the
comparison runs there as SQL (sql/queries/audit.sql). Python holds one COPY
chunk at a time and at most SAMPLE_LIMIT examples per finding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from intake_cli.engine import pools, schema
from intake_cli.platform.config import Settings, check_rpc_name
from intake_cli.platform.db import connect, endpoints, first_line
from intake_cli.platform.errors import (
    ConnectionFailed,
    LedgerContractError,
    NotProvisioned,
    UnknownPool,
)
from intake_cli.platform.sqlfiles import queries

# Examples kept per finding and pool: enough to act on, bounded however
# large the damage (the counts are always exact).
SAMPLE_LIMIT = 1000
# DB2's statement timeout for the one read: a million rows stream in seconds;
# a ledger that does not answer must not hold the command forever.
READ_TIMEOUT_S = 300
# The example ledger intake installs: its commit RPC and what it sold.
EXAMPLE_RPC = "public.finalize_transaction"
EXAMPLE_SOLD = "public.tickets"

# The findings, in the order they are reported; every one is a discrepancy.
FINDINGS = (
    "sold_twice",
    "unknown_to_db1",
    "missing_from_db2",
    "resource_mismatch",
    "rejected_but_sold",
    "repeated_keys",
)
TITLES = {
    "sold_twice": "units sold twice (one resource_id under two or more keys in DB2)",
    "unknown_to_db1": "keys in DB2 that DB1 does not know (lost from DB1, e.g. an async failover)",
    "missing_from_db2": "keys DB1 counts committed that DB2 does not have",
    "resource_mismatch": "keys whose resource_id in DB2 differs from DB1's",
    "rejected_but_sold": "keys DB2 sold that DB1 rejected (their unit went back on sale)",
    "repeated_keys": "keys DB2 holds more than once",
}


def _q(name: str) -> str:
    return queries("audit")[name]


def _split(name: str) -> tuple[str, str]:
    """`schema.name` or `name` (schema public), as commit RPC names are read."""
    schema_name, _, object_name = name.rpartition(".")
    return schema_name or "public", object_name


# ---------------------------------------------------------------------------
# Where DB2's sales are read from


@dataclass(frozen=True)
class SoldSource:
    """The view (or table) or function DB2's sold rows are read from."""

    schema: str
    name: str
    kind: Literal["relation", "function"]
    # True: the example ledger's tickets, used because nothing was configured.
    builtin: bool = False

    def __post_init__(self) -> None:
        # Nothing unchecked gets near SQL text, even though it is quoted.
        if reason := check_rpc_name(f"{self.schema}.{self.name}"):
            raise LedgerContractError(f"db2.sold_query: {reason}")

    def composed(self) -> sql.Composable:
        relation = sql.Identifier(self.schema, self.name)
        return relation if self.kind == "relation" else sql.SQL("{}()").format(relation)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" + ("()" if self.kind == "function" else "")


def configured_source(name: str, *, relation: bool, function: bool) -> SoldSource:
    """The operator's sold query, from what DB2's catalog has under its name.

    A view or table of that name wins over a function of the same name: it
    is what `select … from name` would read.
    """
    schema_name, object_name = _split(name)
    if relation:
        return SoldSource(schema_name, object_name, "relation")
    if function:
        return SoldSource(schema_name, object_name, "function")
    raise LedgerContractError(
        f"db2.sold_query: DB2 has no view, table or function {schema_name}.{object_name} "
        "callable without arguments; name one that returns (idempotency_key, resource_id, "
        "pool_id) for every sale (docs/audit.md)"
    )


def example_source(example_in_use: bool, pool_rpcs: Mapping[str, str]) -> SoldSource:
    """The example ledger's tickets, when nothing is configured and that ledger is in use.

    The example is in use when DB2 has its commit RPC and its tickets table,
    and the audited pools commit through that RPC: a pool committing
    elsewhere sells into tables intake cannot guess.
    """
    if not example_in_use:
        raise LedgerContractError(
            "DB2 is not intake's example ledger (public.finalize_transaction and "
            "public.tickets): set db2.sold_query to a view or function of yours that returns "
            "(idempotency_key, resource_id, pool_id) for every sale (docs/audit.md)"
        )
    elsewhere = {
        pool_id: rpc
        for pool_id, rpc in sorted(pool_rpcs.items())
        if ".".join(_split(rpc)) != EXAMPLE_RPC
    }
    if elsewhere:
        named = ", ".join(f"{pool_id} ({rpc})" for pool_id, rpc in elsewhere.items())
        raise LedgerContractError(
            f"pools commit through another RPC than the example ledger's {EXAMPLE_RPC}: "
            f"{named}; set db2.sold_query to a view or function that returns "
            "(idempotency_key, resource_id, pool_id) for their sales (docs/audit.md)"
        )
    schema_name, object_name = _split(EXAMPLE_SOLD)
    return SoldSource(schema_name, object_name, "relation", builtin=True)


def resolve_source(
    conn: psycopg.Connection, configured: str | None, pool_rpcs: Mapping[str, str]
) -> SoldSource:
    """Where DB2's sales are read from; LedgerContractError (exit 2) if nowhere."""
    if configured is not None:
        schema_name, object_name = _split(configured)
        row = conn.execute(_q("sold_source"), {"schema": schema_name, "name": object_name})
        relation, function = row.fetchone() or (False, False)
        return configured_source(configured, relation=bool(relation), function=bool(function))
    found = conn.execute(_q("example_ledger")).fetchone()
    return example_source(bool(found and found[0]), pool_rpcs)


# ---------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Finding:
    """One kind of discrepancy in one pool: how many in all, and the first few."""

    found: int = 0
    examples: tuple[dict[str, Any], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"found": self.found, "examples": list(self.examples)}


@dataclass(frozen=True)
class PoolAudit:
    pool_id: str
    db1_intents: int = 0
    db1_committed: int = 0
    # DB1's commits recorded after the audit began: DB2's read may predate
    # them, so they are not counted missing from DB2.
    committed_late: int = 0
    db2_rows: int = 0
    db2_keys: int = 0
    findings: Mapping[str, Finding] = field(default_factory=dict)

    @property
    def discrepancies(self) -> int:
        return sum(f.found for f in self.findings.values())

    @property
    def agrees(self) -> bool:
        return self.discrepancies == 0

    def finding(self, name: str) -> Finding:
        return self.findings.get(name, Finding())

    def totals(self) -> str:
        late = f", {self.committed_late:,} during the audit" if self.committed_late else ""
        return (
            f"DB1 knows {self.db1_intents:,} intents, {self.db1_committed:,} committed{late}; "
            f"DB2 sold {self.db2_keys:,} keys in {self.db2_rows:,} rows"
        )

    def lines(self, shown: int = 10) -> list[str]:
        """What an operator reads for each finding: a count, then up to `shown` examples.

        Plain text, with database text in it: the face escapes it.
        """
        lines = []
        for name in FINDINGS:
            finding = self.finding(name)
            if not finding.found:
                continue
            lines.append(f"{TITLES[name]}: {finding.found:,}")
            lines.extend(f"  {describe(name, item)}" for item in finding.examples[:shown])
            if finding.found > min(shown, len(finding.examples)):
                more = finding.found - min(shown, len(finding.examples))
                lines.append(f"  … and {more:,} more")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "agrees": self.agrees,
            "db1_intents": self.db1_intents,
            "db1_committed": self.db1_committed,
            "committed_late": self.committed_late,
            "db2_rows": self.db2_rows,
            "db2_keys": self.db2_keys,
            "findings": {name: self.finding(name).as_json() for name in FINDINGS},
        }


def describe(name: str, item: Mapping[str, Any]) -> str:
    """One example of a finding, on one line."""
    if name == "sold_twice":
        return f"resource {item['resource_id']}: keys {', '.join(map(str, item['keys']))}"
    if name == "resource_mismatch":
        return (
            f"key {item['idempotency_key']}: DB1 resource {item['db1_resource_id']}, "
            f"DB2 resource {item['db2_resource_id']}"
        )
    if name == "repeated_keys":
        return f"key {item['idempotency_key']}: {item['sold_rows']} rows"
    return f"key {item['idempotency_key']} (resource {item['resource_id']})"


@dataclass(frozen=True)
class AuditReport:
    source: SoldSource
    started: datetime
    pools: tuple[PoolAudit, ...]

    @property
    def agrees(self) -> bool:
        return all(p.agrees for p in self.pools)

    def as_json(self) -> dict[str, Any]:
        return {
            "agrees": self.agrees,
            "sold_query": str(self.source),
            "sold_query_builtin": self.source.builtin,
            "started": self.started.isoformat(),
            "sample_limit": SAMPLE_LIMIT,
            "pools": [p.as_json() for p in self.pools],
        }


def assemble(
    pool_ids: Sequence[str],
    totals: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[PoolAudit, ...]:
    """Each pool's audit from the comparison's rows (sql/queries/audit.sql).

    A finding's rows carry `pool_id` and `found` (the count in all) beside
    the example's own columns; a pool with no rows for a finding has none.
    """
    by_pool: dict[str, dict[str, Finding]] = {pool_id: {} for pool_id in pool_ids}
    for name, rows in findings.items():
        grouped: dict[str, list[dict[str, Any]]] = {}
        counts: dict[str, int] = {}
        for row in rows:
            pool_id = row["pool_id"]
            counts[pool_id] = int(row["found"])
            example = {k: v for k, v in row.items() if k not in ("pool_id", "found")}
            grouped.setdefault(pool_id, []).append(example)
        for pool_id, examples in grouped.items():
            by_pool.setdefault(pool_id, {})[name] = Finding(counts[pool_id], tuple(examples))
    totals_by_pool = {row["pool_id"]: row for row in totals}
    audits = []
    for pool_id in pool_ids:
        row = totals_by_pool.get(pool_id, {})
        audits.append(
            PoolAudit(
                pool_id,
                db1_intents=int(row.get("db1_intents", 0)),
                db1_committed=int(row.get("db1_committed", 0)),
                committed_late=int(row.get("committed_late", 0)),
                db2_rows=int(row.get("db2_rows", 0)),
                db2_keys=int(row.get("db2_keys", 0)),
                findings=by_pool[pool_id],
            )
        )
    return tuple(audits)


# ---------------------------------------------------------------------------
# Running it


def audit(settings: Settings, pool_id: str | None = None) -> AuditReport:
    """Compare DB2's sales with DB1's intents, per pool (every provisioned pool, or one).

    DB1 is left exactly as it was (its transaction is rolled back) and DB2
    is only read, in a read-only transaction.
    """
    where = endpoints(settings)
    with connect(where.db1, "DB1") as db1:
        if not schema.is_provisioned(db1):
            raise NotProvisioned()
        known = pools.existing(db1)
        if pool_id is not None and pool_id not in known:
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
        pool_ids = [pool_id] if pool_id is not None else sorted(known)
        rpcs = {p: str(known[p]["commit_rpc_name"]) for p in pool_ids}
        with connect(where.db2, "DB2") as db2:
            source = resolve_source(db2, settings.db2.sold_query, rpcs)
            with db1.transaction(force_rollback=True), db1.cursor(row_factory=dict_row) as cur:
                started = cur.execute(_q("started")).fetchone()["started"]  # type: ignore[index]
                cur.execute(_q("create_sold"))
                cur.execute(_q("create_facts"))
                _copy_sold(db2, db1, source, pool_ids)
                # After DB2's read: every key DB2 had was claimed on DB1 before it.
                cur.execute(_q("load_facts"), {"pools": pool_ids})
                cur.execute(_q("analyze"))
                params = {"pools": pool_ids, "started": started, "limit": SAMPLE_LIMIT}
                totals = cur.execute(_q("totals"), params).fetchall()
                found = {name: cur.execute(_q(name), params).fetchall() for name in FINDINGS}
    return AuditReport(source, started, assemble(pool_ids, totals, found))


def _copy_sold(
    db2: psycopg.Connection, db1: psycopg.Connection, source: SoldSource, pool_ids: list[str]
) -> None:
    """Stream DB2's sold rows into DB1's audit_sold, one COPY chunk at a time.

    Neither side parses a row in Python: the bytes DB2's COPY writes are the
    bytes DB1's COPY reads.
    """
    statement = sql.SQL(_q("copy_sold")).format(
        source=source.composed(), pools=sql.Literal(pool_ids)
    )
    # Which side an error came from: DB2's is the sold query's (or DB2's)
    # fault and is explained; DB1's is reported as it is.
    side = "DB2"
    try:
        with db2.transaction(), db2.cursor() as read, db1.cursor() as write:
            read.execute(_q("read_only"))
            read.execute(_q("read_timeout"), {"timeout_ms": str(READ_TIMEOUT_S * 1000)})
            with read.copy(statement) as rows:
                side = "DB1"
                with write.copy(_q("load_sold")) as load:
                    while True:
                        side = "DB2"
                        chunk = rows.read()
                        if not chunk:
                            break
                        side = "DB1"
                        load.write(chunk)
                    side = "DB1"
                side = "DB2"
    except psycopg.Error as exc:
        if side == "DB1":
            raise
        raise _read_failed(exc, source) from None


def _read_failed(exc: psycopg.Error, source: SoldSource) -> Exception:
    reason = first_line(exc)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return ConnectionFailed(
            f"DB2: reading {source} did not finish within {READ_TIMEOUT_S} s: {reason}"
        )
    if isinstance(exc, psycopg.OperationalError):
        return ConnectionFailed(f"DB2: the connection failed while reading {source}: {reason}")
    return LedgerContractError(
        f"DB2 could not read what it sold from {source}: {reason}; the sold query must return "
        "idempotency_key, resource_id and pool_id, readable by intake's role (docs/audit.md)"
    )
