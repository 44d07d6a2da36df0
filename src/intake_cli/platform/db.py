"""Where DB1 and DB2 are, and connections to them with errors an operator can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from intake_cli.platform.config import DatabaseSettings, Settings
from intake_cli.platform.embedded import EmbeddedClusters, db1_dsn
from intake_cli.platform.errors import ConnectionFailed, NotProvisioned
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.standby import ensure_standby

CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class Endpoints:
    db1: str
    db2: str
    embedded: bool


def _configured(db: DatabaseSettings) -> str:
    # An empty conninfo makes libpq read PGHOST, PGPORT, PGUSER, … itself.
    return db.dsn or ""


def endpoints(settings: Settings, *, start: bool = False) -> Endpoints:
    """DSNs for DB1 and DB2; with start=True the embedded clusters are brought up."""
    wanted = tuple(
        name for name, db in (("db1", settings.db1), ("db2", settings.db2)) if db.embedded
    )
    clusters = EmbeddedClusters(settings.state_dir, settings.embedded)
    if wanted and start:
        clusters.ensure(wanted)
        # DB1's standby when embedded.standby asks for one (none otherwise).
        running = ensure_standby(clusters) if settings.db1.embedded else clusters.load()
    else:
        running = clusters.load()
        missing = [name for name in wanted if name not in running]
        if missing:
            raise NotProvisioned(
                f"no embedded {' and '.join(missing)} under {settings.state_dir}: "
                "run `intake up` first"
            )
    # With a standby, both nodes: libpq settles on whichever accepts writes.
    db1 = db1_dsn(running) if settings.db1.embedded else _configured(settings.db1)
    db2 = running["db2"].dsn if settings.db2.embedded else _configured(settings.db2)
    return Endpoints(db1=db1, db2=db2, embedded=bool(wanted))


def first_line(exc: BaseException) -> str:
    """A database error's first line, for one-line messages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__


def describe_dsn(dsn: str) -> str:
    """The DSN without its passwords (the server's and the client key's), for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable connection string)"
    info.pop("password", None)
    info.pop("sslpassword", None)
    return " ".join(f"{k}={v}" for k, v in info.items()) or "(PG* environment)"


@contextmanager
def connect(dsn: str, label: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection]:
    """A connection to DB1 or DB2 (`label`); DB1 must be a primary (see standby_refusal)."""
    try:
        conn = open_sync(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        where = describe_dsn(dsn)
        raise ConnectionFailed(f"cannot connect to {label} ({where}): {first_line(exc)}") from None
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(f"{label}: invalid connection string: {exc}") from None
    with conn:
        if label == DB1:
            in_recovery = conn.execute(IN_RECOVERY).fetchone()
            if autocommit is False:
                conn.rollback()
            if in_recovery and in_recovery[0]:
                raise ConnectionFailed(standby_refusal(dsn))
        yield conn


DB1 = "DB1"
IN_RECOVERY = "select pg_catalog.pg_is_in_recovery()"


def standby_refusal(dsn: str) -> str:
    """What to say when DB1's DSN reaches a standby: intake writes, so it needs the primary.

    Without this the first write fails with "cannot access temporary or
    unlogged relations during recovery", which says nothing of the cause.
    """
    return (
        f"DB1 ({describe_dsn(dsn)}) is a standby in recovery: intake writes to DB1 and needs "
        "its primary. Name every node and let libpq find the primary: "
        "host=a,b port=5432,5432 ... target_session_attrs=read-write (docs/failover.md)"
    )
