"""A throwaway DB1 with intake's schema and the baselines' tables, and pgbench runs on it.

The scripts pgbench runs live in sql/bench/. Statements go out in simple
protocol (`-M simple`): buyers reach a hosted DB1 through a transaction-mode
pooler, where prepared statements are not available.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from intake_cli.engine import pools, schema
from intake_cli.platform.config import EmbeddedSettings, PoolSettings
from intake_cli.platform.embedded import DATABASE, SUPERUSER, Cluster, EmbeddedClusters, pg_bindir
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import sql_root
from intake_cli.tools import pooler as pgbouncer_pooler
from intake_cli.tools.bench.common.events import NO_WEBHOOK
from intake_cli.tools.bench.common.results import machine, percentile

POOL_ID = "bench"
QUEUE = "intents"
# pgbench's own threads: one per core of the machine the bar was set on.
PGBENCH_THREADS = 2
# pgbench runs more clients than this badly, and the server's lock table is
# sized for it.
MAX_CLIENTS = 1000
# Headroom above the clients for our own connection and autovacuum.
SPARE_CONNECTIONS = 10
# A reset that lost a deadlock to intake's own maintenance job is retried.
RESET_ATTEMPTS = 3


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    script: str
    # Which tables bench.reset seeds for it; None: nothing to sell.
    sale: str | None
    # Buyers per transaction: claims/s is tps times this.
    batch: int = 1
    # Through PgBouncer in transaction mode rather than straight to the server.
    pooled: bool = False


CLAIM = Workload("claim", "intake claim", "claim.sql", "claim")


@dataclass
class Run:
    workload: str
    clients: int
    duration_s: int
    tps: float
    transactions: int
    failed: int
    # Per transaction: a batched run's latency is its whole batch's.
    latency_ms: dict[str, float]
    # The sale ran dry during a throughput run: the later answers were the
    # cheap "sold out", so the figure would flatter the workload.
    ran_out: bool = False
    batch: int = 1
    claims_per_s: float = 0.0
    # Intents in the queue after an intake run: the claims really made.
    intents: int | None = None


_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def pgbench_path() -> Path:
    """The pgbench beside the server binaries (same version), else the one on PATH."""
    beside = pg_bindir() / "pgbench"
    if beside.exists():
        return beside
    found = shutil.which("pgbench")
    if found:
        return Path(found)
    raise UsageError(
        "pgbench was not found: it ships with PostgreSQL (Debian: postgresql-15 or "
        "postgresql-client-15)"
    )


def parse_summary(text: str) -> tuple[float, float, int, int]:
    """tps, average latency (ms), transactions and failures from pgbench's summary."""
    tps, latency, processed = _TPS.search(text), _LATENCY.search(text), _PROCESSED.search(text)
    if processed and int(processed.group(1)) == 0:
        # pgbench's clock runs while it connects: about 2 s for 1,000 clients
        # on 2 cores.
        raise UsageError(
            "pgbench finished no transaction: its clients took the whole run to connect; "
            "give --duration more seconds"
        )
    if not (tps and latency and processed):
        raise IntakeError(f"pgbench's summary was not understood:\n{text.strip()}")
    failed = _FAILED.search(text)
    return (
        float(tps.group(1)),
        float(latency.group(1)),
        int(processed.group(1)),
        int(failed.group(1)) if failed else 0,
    )


def log_latencies_us(prefix: Path) -> list[int]:
    """Per-transaction latencies (µs) from pgbench's --log files, one per thread."""
    values: list[int] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        with path.open(encoding="ascii", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                # Column 3 is the transaction's time; failed or skipped ones
                # carry a word there and have no latency to count.
                if len(fields) > 2 and fields[2].isdigit():
                    values.append(int(fields[2]))
    return values


def script_path(name: str) -> Path:
    return sql_root() / "bench" / name


def script(name: str) -> str:
    return script_path(name).read_text(encoding="utf-8")


def one(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> int:
    """The number a sql/bench script answers with (0 for no row)."""
    row = conn.execute(script(name), params).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Pending:
    """A pgbench run under way."""

    proc: subprocess.Popen[str]
    log_prefix: Path
    workload: Workload
    clients: int
    seconds: int


class Bench:
    """One throwaway DB1 cluster, our connection to it, and the runs made on it."""

    def __init__(
        self,
        workdir: Path,
        cluster: Cluster,
        conn: psycopg.Connection,
        clusters: EmbeddedClusters | None = None,
    ) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.conn = conn
        # Where the cluster's state lives: --standby gives it a standby there.
        self.clusters = clusters
        self.pgbench_bin = pgbench_path()
        # Set while the pooled runs go: their pgbench connects here instead.
        self.pooler: pgbouncer_pooler.Pooler | None = None

    def provision(self) -> None:
        schema.apply_db1(self.conn, QUEUE, f"{QUEUE}_dlq")
        self.conn.execute(script("baselines.sql"))

    def machine(self) -> dict[str, Any]:
        shown = subprocess.run(
            [str(self.pgbench_bin), "--version"], capture_output=True, text=True
        ).stdout.strip()
        return machine(self.conn, pgbench=shown)

    def reset(self, sale: str | None, units: int) -> None:
        """Empty every sale and seed the next one."""
        # The cluster runs intake's pg_cron jobs: the minute's maintenance
        # rebuilds an inventory it finds emptied and puts skipped units on
        # the release list, and its locks can meet the reset's truncate in
        # the other order. Whichever side PostgreSQL aborts, a reset from the
        # start is still a reset.
        for attempt in range(RESET_ATTEMPTS):
            try:
                self._reset(sale, units)
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == RESET_ATTEMPTS - 1:
                    raise

    def _reset(self, sale: str | None, units: int) -> None:
        self.conn.execute(
            "select bench.reset(%(sale)s, %(units)s)", {"sale": sale or "", "units": units}
        )
        if sale == "claim":
            pool = pool_settings(units)
            with self.conn.transaction():
                pools.reconcile(self.conn, (pool,))
            pools.seed(self.conn, pool)
        # One run's dead tuples and unset hint bits must not slow the next,
        # and the checkpoint keeps one run's full-page writes out of another.
        self.conn.execute("vacuum analyze")
        self.conn.execute("checkpoint")

    def start(self, workload: Workload, clients: int, seconds: float) -> Pending:
        logs = self.workdir / "logs" / f"{workload.key}-c{clients}-{time.time_ns()}"
        logs.mkdir(parents=True)
        prefix = logs / "tx"
        port, passfile = self.cluster.port, self.cluster.passfile
        if workload.pooled:
            if self.pooler is None:
                raise IntakeError(f"{workload.title}: no pooler is running")
            port, passfile = self.pooler.port, str(self.pooler.passfile)
        args = [
            str(self.pgbench_bin),
            "-h", "127.0.0.1",
            "-p", str(port),
            "-U", SUPERUSER,
            "-n",
            "-M", "simple",
            "-f", str(script_path(workload.script)),
            *(["-D", f"batch={workload.batch}"] if workload.batch > 1 else []),
            "-c", str(clients),
            "-j", str(min(PGBENCH_THREADS, clients)),
            "-T", str(math.ceil(seconds)),
            "--log",
            f"--log-prefix={prefix}",
            DATABASE,
        ]  # fmt: skip
        # Output goes to files, not pipes: nobody reads a pipe while the sell-out
        # waits on the herd, and a full one would stall pgbench.
        # No lock_timeout for the herd: at 1,000 clients a hot-row buyer
        # waits longer than DB1's 5 s for its turn, and a baseline that
        # errors out measures nothing. (intake's claims never wait on a row.)
        # The cluster's password comes from intake's passfile, as for intake.
        # PgBouncer refuses startup options it does not know, and the pooled
        # runs have no hot row to wait on.
        env = {
            **os.environ,
            **({} if workload.pooled else {"PGOPTIONS": "-c lock_timeout=0"}),
            "PGPASSFILE": passfile,
        }
        with (logs / "stdout").open("w") as out, (logs / "stderr").open("w") as err:
            proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=logs, env=env)
        return Pending(proc, prefix, workload, clients, math.ceil(seconds))

    def finish(self, pending: Pending) -> Run:
        workload, clients = pending.workload, pending.clients
        pending.proc.wait()
        logs = pending.log_prefix.parent
        stdout = (logs / "stdout").read_text(errors="replace")
        stderr = (logs / "stderr").read_text(errors="replace")
        if pending.proc.returncode != 0:
            tail = " | ".join((stderr or stdout).strip().splitlines()[-5:])
            raise IntakeError(f"pgbench ({workload.key}, {clients} clients) failed: {tail}")
        tps, average, processed, failed = parse_summary(stdout)
        latencies = sorted(log_latencies_us(pending.log_prefix))
        return Run(
            workload=workload.key,
            clients=clients,
            duration_s=pending.seconds,
            tps=round(tps, 1),
            transactions=processed,
            failed=failed,
            latency_ms={
                "avg": round(average, 3),
                "p50": round(percentile(latencies, 0.50) / 1000, 3),
                "p99": round(percentile(latencies, 0.99) / 1000, 3),
            },
            ran_out=self.ran_out(workload.sale),
            batch=workload.batch,
            claims_per_s=round(tps * workload.batch, 1),
            intents=self.queued() if workload.sale == "claim" else None,
        )

    def run(self, workload: Workload, clients: int, seconds: int) -> Run:
        return self.finish(self.start(workload, clients, seconds))

    def queued(self) -> int:
        """Intents in the queue: the claims really made."""
        return one(self.conn, "queued_intents.sql")

    def ran_out(self, sale: str | None) -> bool:
        if sale is None:
            return False
        row = self.conn.execute(script("units_left.sql")).fetchone()
        assert row is not None
        left = dict(zip(("hot_row", "skip_locked", "claim"), row, strict=True))
        return not left[sale]


def pool_settings(units: int) -> PoolSettings:
    # The webhook is never called: the bench measures claims, not the drain.
    return PoolSettings(POOL_ID, units, NO_WEBHOOK)


@contextmanager
def bench_db1(workdir: Path, settings: EmbeddedSettings) -> Iterator[Bench]:
    """A throwaway DB1 cluster under workdir with intake's schema and the baselines,
    and our connection to it; stopped (its log kept in workdir) afterwards."""
    clusters = EmbeddedClusters(workdir / "cluster", settings)
    try:
        cluster = clusters.ensure(("db1",))["db1"]
        with open_sync(cluster.dsn) as conn:
            bench = Bench(workdir, cluster, conn, clusters)
            bench.provision()
            yield bench
    finally:
        log = workdir / "cluster" / "db1.log"
        if log.exists():
            # Kept beside the pgbench logs: stop() removes the cluster's directory.
            shutil.copy(log, workdir / "db1.log")
        clusters.stop()
