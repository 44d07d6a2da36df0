"""`intake bench claims`: the claim path's throughput, measured with pgbench.

Every figure is relative to baselines measured in the same run, on the same
throwaway cluster, so a ratio never mixes machines or moods: `SELECT 1`, the
ceiling of what the server and pgbench can turn round on this machine; a hot
row, one counter every buyer decrements (as a transaction, and at its best in
one statement); the literal `SELECT … FOR UPDATE SKIP LOCKED` over a partial
index; and intake's own claim, one buyer per statement and in batches
(`claim_resources`, reported as claims/s: transactions/s times batch size). A
last run sells a pool out and compares how fast its first and last tenth of
units went.

The scripts pgbench runs live in sql/bench/. Statements go out in simple
protocol (`-M simple`): buyers reach a hosted DB1 through a transaction-mode
pooler, where prepared statements are not available.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import typer

from intake_cli.engine import lifecycle, pools, schema
from intake_cli.engine.claims import MAX_BATCH
from intake_cli.platform import config
from intake_cli.platform.config import EmbeddedSettings, PoolSettings
from intake_cli.platform.embedded import DATABASE, SUPERUSER, Cluster, EmbeddedClusters, pg_bindir
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import sql_root
from intake_cli.tools import pooler as pgbouncer_pooler
from intake_cli.tools.bench import chart as bench_chart
from intake_cli.tools.bench import standby as bench_standby

bench_app = typer.Typer(
    help="Measure intake against baselines on a throwaway local cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

POOL_ID = "bench"
QUEUE = "intents"
# pgbench's own threads: one per core of the machine the bar was set on.
PGBENCH_THREADS = 2
DEFAULT_CLIENTS = "64,256,1000"
DEFAULT_BATCH_SIZES = "10,50,100"
# pgbench runs more clients than this badly, and the server's lock table is
# sized for it below.
MAX_CLIENTS = 1000
# Headroom above the clients for our own connection and autovacuum.
SPARE_CONNECTIONS = 10
# Enough that no throughput run sells out: even the SELECT 1 ceiling of a
# fast machine would not get through it in the default 15 s.
FULL_INVENTORY = 2_000_000
# Batched claims run at 30,000-70,000/s: a quick run's 2 s must not sell out.
QUICK_INVENTORY = 300_000
# A sell-out sized to last this long at the measured claim rate: long enough
# for the pool's indexes and the queue to grow, short enough to repeat.
SELLOUT_SECONDS = 6
QUICK_SELLOUT_SECONDS = 1
# How long the herd knocks on the paused pool before the sale opens.
SELLOUT_WARMUP_SECONDS = 2.0
QUICK_WARMUP_SECONDS = 0.5
CONNECT_TIMEOUT_S = 60
QUICK_CLIENTS = 16
QUICK_DURATION = 2
QUICK_BATCH_SIZES = (10,)

# The bar, judged at BAR_CLIENTS (or the largest client count of a run
# without it), every ratio against baselines of the same run.
BAR_CLIENTS = 256
TARGET_CLAIMS_PER_S = 6000.0
TARGET_VS_HOT_ROW = 10.0
TARGET_VS_SKIP_LOCKED = 3.0
TARGET_SELLOUT_LAST_VS_FIRST = 0.90
TARGET_BATCHED_PER_S = 50_000.0


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


WORKLOADS = (
    Workload("select1", "SELECT 1 (ceiling)", "select1.sql", None),
    Workload("hot_row", "hot row (transaction)", "hot_row.sql", "hot_row"),
    Workload(
        "hot_row_one_statement",
        "hot row (one statement)",
        "hot_row_one_statement.sql",
        "hot_row",
    ),
    Workload("skip_locked", "literal SKIP LOCKED", "skip_locked.sql", "skip_locked"),
    Workload("claim", "intake claim", "claim.sql", "claim"),
)
CLAIM = WORKLOADS[-1]
BASELINES = ("select1", "hot_row", "hot_row_one_statement", "skip_locked")
# Buyers reach a hosted DB1 through a transaction-mode pooler (Supavisor's
# port 6543): the same single claim, and its own SELECT 1 ceiling, through
# PgBouncer with few server connections for thousands of clients.
POOLED_WORKLOADS = (
    Workload("select1_pooler", "SELECT 1 via PgBouncer", "select1.sql", None, pooled=True),
    Workload("claim_pooler", "intake claim via PgBouncer", "claim.sql", "claim", pooled=True),
)
POOLED_KEYS = frozenset(w.key for w in POOLED_WORKLOADS)
DEFAULT_POOLER_CLIENTS = "1000,3000"
# Server connections PgBouncer keeps: the measurement used 64.
DEFAULT_POOLER_POOL_SIZE = 64
# Below the pooler's own client limit, with room for our connections.
MAX_POOLER_CLIENTS = pgbouncer_pooler.MAX_CLIENT_CONNECTIONS - 500
TARGET_POOLED_VS_DIRECT = 0.80


def batched(size: int) -> Workload:
    return Workload(
        f"claim_batch_{size}",
        f"intake claim_resources x{size}",
        "claim_batch.sql",
        "claim",
        batch=size,
    )


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    duration: int
    inventory: int
    sellout_seconds: int
    warmup_seconds: float
    batch_sizes: tuple[int, ...] = ()
    # Client counts for the single claim through PgBouncer; () for none.
    pooler_clients: tuple[int, ...] = ()
    pooler_pool_size: int = DEFAULT_POOLER_POOL_SIZE
    # The claims again with a synchronous standby, last (tools/bench/standby.py).
    standby: bool = False

    @property
    def top_clients(self) -> int:
        return max(self.clients)

    @property
    def bar_clients(self) -> int:
        return bar_clients(self.clients)

    @property
    def workloads(self) -> tuple[Workload, ...]:
        return WORKLOADS + tuple(batched(size) for size in self.batch_sizes)


def bar_clients(clients: tuple[int, ...] | list[int]) -> int:
    """The client count the bar is judged at: 256, or the largest the run has."""
    return BAR_CLIENTS if BAR_CLIENTS in clients else max(clients)


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


@dataclass
class Sellout:
    clients: int
    units: int
    sold_out: bool
    warmup_s: float
    # From the first unit locked to the last.
    seconds: float
    # Claims per second within each tenth of the units, in the order sold.
    tenths_per_s: list[float]

    @property
    def first_tenth_per_s(self) -> float:
        return self.tenths_per_s[0]

    @property
    def last_tenth_per_s(self) -> float:
        return self.tenths_per_s[-1]

    @property
    def slowdown(self) -> float:
        """How much slower the last tenth went than the first (negative: faster)."""
        return 1 - self.last_tenth_per_s / self.first_tenth_per_s

    @property
    def slowdown_vs_median(self) -> float:
        """The last tenth against the median tenth. The first tenth carries
        each fresh connection's first claims (plans prepared, caches filled),
        so this is the steadier view of whether the sale slowed down."""
        return 1 - self.last_tenth_per_s / statistics.median(self.tenths_per_s)

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "first_tenth_per_s": self.first_tenth_per_s,
            "last_tenth_per_s": self.last_tenth_per_s,
            "slowdown": round(self.slowdown, 4),
            "slowdown_vs_median": round(self.slowdown_vs_median, 4),
        }


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    sellout: Sellout | None = None
    standby: list[bench_standby.StandbyRun] | None = None

    def claims_per_s(self, workload: str, clients: int) -> float | None:
        return next(
            (r.claims_per_s for r in self.runs if r.workload == workload and r.clients == clients),
            None,
        )

    def ratio(self, workload: str, baseline: str, clients: int) -> float | None:
        """Claims/s against a baseline's transactions/s, at the same client count.

        A pooled run is held to the baseline measured through the same pooler.
        """
        if workload in POOLED_KEYS:
            baseline = f"{baseline}_pooler"
        base = self.claims_per_s(baseline, clients)
        value = self.claims_per_s(workload, clients)
        return value / base if base and value is not None else None

    def ratios(self) -> list[dict[str, Any]]:
        return [
            {
                "workload": run.workload,
                "clients": run.clients,
                **{f"vs_{base}": self.ratio(run.workload, base, run.clients) for base in BASELINES},
            }
            for run in self.runs
            if run.workload not in ("select1", "hot_row", "select1_pooler")
        ]

    def targets(self) -> list[dict[str, Any]]:
        clients = bar_clients(self.settings["clients"])
        found = [
            _target(
                f"claim >= {TARGET_CLAIMS_PER_S:,.0f} claims/s",
                clients,
                self.claims_per_s("claim", clients) or 0.0,
                TARGET_CLAIMS_PER_S,
                "{:,.0f}/s",
            ),
            _target(
                f"claim >= {TARGET_VS_HOT_ROW:g}x hot row (transaction)",
                clients,
                self.ratio("claim", "hot_row", clients) or 0.0,
                TARGET_VS_HOT_ROW,
                "{:.1f}x",
            ),
            _target(
                f"claim >= {TARGET_VS_SKIP_LOCKED:g}x literal SKIP LOCKED",
                clients,
                self.ratio("claim", "skip_locked", clients) or 0.0,
                TARGET_VS_SKIP_LOCKED,
                "{:.1f}x",
            ),
        ]
        if self.sellout is not None:
            so = self.sellout
            target = _target(
                f"sell-out: last tenth >= {TARGET_SELLOUT_LAST_VS_FIRST:.0%} of the first's rate",
                so.clients,
                so.last_tenth_per_s / so.first_tenth_per_s,
                TARGET_SELLOUT_LAST_VS_FIRST,
                "{:.1%}",
            )
            if not so.sold_out:
                target.update(met=False, shown=target["shown"] + " (not sold out)")
            found.append(target)
        sizes = self.settings.get("batch_sizes") or []
        if sizes:
            key = batched(max(sizes)).key
            target = _target(
                f"batched claims (x{max(sizes)}) >= {TARGET_BATCHED_PER_S:,.0f} claims/s",
                clients,
                self.claims_per_s(key, clients) or 0.0,
                TARGET_BATCHED_PER_S,
                "{:,.0f}/s",
            )
            # A backend that batches needs few connections: where another
            # client count of the run did better, say so beside the verdict.
            best = max((r for r in self.runs if r.workload == key), key=lambda r: r.claims_per_s)
            if best.clients != clients:
                target["best"] = {"clients": best.clients, "claims_per_s": best.claims_per_s}
                target["shown"] += f" ({best.claims_per_s:,.0f}/s at {best.clients} clients)"
            found.append(target)
        pooled = self.settings.get("pooler_clients") or []
        direct = self.claims_per_s("claim", clients)
        if pooled and direct:
            most = max(pooled)
            found.append(
                _target(
                    f"claim via PgBouncer at {most} clients >= {TARGET_POOLED_VS_DIRECT:.0%} "
                    f"of the direct claim at {clients}",
                    most,
                    (self.claims_per_s("claim_pooler", most) or 0.0) / direct,
                    TARGET_POOLED_VS_DIRECT,
                    "{:.1%}",
                )
            )
        judged = bench_standby.judged(self.standby or [], clients)
        if judged is not None:
            target = _target(
                f"{judged.workload} with a synchronous standby >= "
                f"{bench_standby.TARGET_WITH_VS_WITHOUT:.0%} of without",
                clients,
                judged.ratio,
                bench_standby.TARGET_WITH_VS_WITHOUT,
                "{:.1%}",
            )
            if judged.verdict != "synchronous":
                target.update(met=False, shown=f"{target['shown']} (replication: {judged.verdict})")
            found.append(target)
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "runs": [asdict(r) for r in self.runs],
            "ratios": self.ratios(),
            "sellout": self.sellout.as_json() if self.sellout else None,
            "standby": None if self.standby is None else [asdict(r) for r in self.standby],
            "targets": self.targets(),
        }


def _target(name: str, clients: int, value: float, threshold: float, fmt: str) -> dict[str, Any]:
    """One line of the bar; a miss says by how much it fell short."""
    met = value >= threshold
    return {
        "target": name,
        "clients": clients,
        "value": round(value, 4),
        "threshold": threshold,
        "shown": fmt.format(value),
        "met": met,
        # The share of the threshold that is missing, e.g. 0.12: 12 % short.
        "short_by": None if met else round(1 - value / threshold, 4),
    }


# -- pgbench ------------------------------------------------------------------

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


def percentile(ordered: list[int], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


def tenth_rates(tenths: list[tuple[int, int, float, float]]) -> list[float]:
    """Claims/s within each tenth: its units after the first, over its span."""
    return [
        round((units - 1) / (last - first), 1) if last > first else math.inf
        for _, units, first, last in tenths
    ]


# -- the bench ----------------------------------------------------------------


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
        self.conn.execute(_script("baselines.sql"))

    def reset(self, sale: str | None, units: int) -> None:
        """Empty every sale and seed the next one."""
        self.conn.execute(
            "select bench.reset(%(sale)s, %(units)s)", {"sale": sale or "", "units": units}
        )
        if sale == "claim":
            pool = _pool(units)
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
            "-f", str(_script_path(workload.script)),
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
        intents = None
        if workload.sale == "claim":
            row = self.conn.execute(_script("queued_intents.sql")).fetchone()
            intents = int(row[0]) if row else 0
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
            intents=intents,
        )

    def run(self, workload: Workload, clients: int, seconds: int) -> Run:
        return self.finish(self.start(workload, clients, seconds))

    def ran_out(self, sale: str | None) -> bool:
        if sale is None:
            return False
        row = self.conn.execute(_script("units_left.sql")).fetchone()
        assert row is not None
        left = dict(zip(("hot_row", "skip_locked", "claim"), row, strict=True))
        return not left[sale]

    def sellout(self, clients: int, claim_tps: float, seconds: int, warmup: float) -> Sellout:
        """Sell a pool sized for `seconds` of claims out, and time it by tenths."""
        units = max(1000, round(claim_tps * seconds))
        self.reset("claim", units)
        # The herd connects and knocks on the paused pool first: a real drop
        # opens on warm connections, and hundreds of backends starting cold
        # would otherwise slow the first tenth and flatter the comparison.
        self._pause(True)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        # Twice the expected time, so that a sale which slows down still ends.
        pending = self.start(CLAIM, clients, warmup + 2 * seconds)
        try:
            while self._connected() < clients:
                if pending.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(warmup)
        finally:
            self._pause(False)
        self.finish(pending)
        tenths = self.conn.execute(_script("sellout_pace.sql"), {"pool_id": POOL_ID}).fetchall()
        if len(tenths) < 10:
            raise IntakeError(f"the sell-out run claimed too few units to time in tenths: {tenths}")
        rows = [(int(t), int(n), float(first), float(last)) for t, n, first, last in tenths]
        return Sellout(
            clients=clients,
            units=sum(n for _, n, _, _ in rows),
            sold_out=self.ran_out("claim"),
            warmup_s=warmup,
            seconds=round(rows[-1][3] - rows[0][2], 3),
            tenths_per_s=tenth_rates(rows),
        )

    def _pause(self, paused: bool) -> None:
        self.conn.execute(_script("pause.sql"), {"paused": paused, "pool_id": POOL_ID})

    def _connected(self) -> int:
        row = self.conn.execute(_script("pgbench_connected.sql")).fetchone()
        return int(row[0]) if row else 0


def _script_path(name: str) -> Path:
    return sql_root() / "bench" / name


def _script(name: str) -> str:
    return _script_path(name).read_text(encoding="utf-8")


def _pool(units: int) -> PoolSettings:
    # The webhook is never called: the bench measures claims, not the drain.
    return PoolSettings(POOL_ID, units, "http://127.0.0.1:9/validate")


def _machine(conn: psycopg.Connection, pgbench: Path) -> dict[str, Any]:
    version = conn.execute("show server_version").fetchone()
    pgbench_version = subprocess.run(
        [str(pgbench), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        # The cores this process may use (nproc), which pgbench and the
        # server share, rather than what the host has.
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "postgresql": version[0] if version else None,
        "pgbench": pgbench_version,
    }


def _workdir() -> Path:
    # The server runs as an unprivileged user when we are root: it must be
    # able to enter this directory, which mkdtemp creates 0700.
    path = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    path.chmod(0o755)
    return path


def _say(message: str) -> None:
    typer.echo(message, err=True)


def measure(plan: Plan, workdir: Path) -> Report:
    """Start a DB1 cluster under workdir, run every workload, and stop it."""
    settings = EmbeddedSettings(
        max_connections=plan.top_clients + SPARE_CONNECTIONS,
        synchronous_commit=True,
        # Room in the shared lock table for every client holding a whole
        # batch's advisory locks at once, besides its relation locks.
        max_locks_per_transaction=max(64, max(plan.batch_sizes, default=0) + 64),
    )
    with bench_db1(workdir, settings) as bench:
        conn = bench.conn
        report = Report(
            machine=_machine(conn, bench.pgbench_bin),
            settings={
                "clients": list(plan.clients),
                "bar_clients": plan.bar_clients,
                "batch_sizes": list(plan.batch_sizes),
                "duration_s": plan.duration,
                "inventory": plan.inventory,
                "sellout_seconds": plan.sellout_seconds,
                "pgbench_threads": PGBENCH_THREADS,
                "pooler_clients": list(plan.pooler_clients),
                "pooler_pool_size": plan.pooler_pool_size if plan.pooler_clients else None,
                "standby": plan.standby,
                "protocol": "simple",
                "synchronous_commit": settings.synchronous_commit,
                "max_connections": settings.max_connections,
                "max_locks_per_transaction": settings.max_locks_per_transaction,
                "shared_buffers": settings.shared_buffers,
            },
        )
        total = len(plan.clients) * len(plan.workloads) + 1
        step = 0
        for clients in plan.clients:
            for workload in plan.workloads:
                step += 1
                _say(f"[{step}/{total}] {workload.title}, {clients} clients, {plan.duration} s")
                bench.reset(workload.sale, plan.inventory)
                run = bench.run(workload, clients, plan.duration)
                per_s = f" = {run.claims_per_s:,.0f} claims/s" if run.batch > 1 else ""
                _say(
                    f"    {run.tps:,.0f} tps{per_s}, p50 {run.latency_ms['p50']} ms, "
                    f"p99 {run.latency_ms['p99']} ms"
                    + (" (ran out of inventory)" if run.ran_out else "")
                )
                report.runs.append(run)
        claim_tps = report.claims_per_s("claim", plan.bar_clients) or 0.0
        _say(
            f"[{total}/{total}] sell-out, {plan.bar_clients} clients, "
            f"~{plan.sellout_seconds} s of inventory"
        )
        report.sellout = bench.sellout(
            plan.bar_clients, claim_tps, plan.sellout_seconds, plan.warmup_seconds
        )
        if plan.pooler_clients:
            _measure_pooled(bench, plan, report)
        if plan.standby:
            claims = (CLAIM, *(batched(size) for size in plan.batch_sizes))
            report.standby = bench_standby.measure(bench, plan, report, claims)
        return report


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


def _measure_pooled(bench: Bench, plan: Plan, report: Report) -> None:
    """The single claim and SELECT 1 through PgBouncer, after the direct runs."""
    with pgbouncer_pooler.pgbouncer(bench.cluster, pool_size=plan.pooler_pool_size) as pooler:
        report.machine["pgbouncer"] = pgbouncer_pooler.version()
        bench.pooler = pooler
        try:
            for clients in plan.pooler_clients:
                for workload in POOLED_WORKLOADS:
                    _say(
                        f"[pooler] {workload.title}, {clients} clients on "
                        f"{plan.pooler_pool_size} server connections, {plan.duration} s"
                    )
                    bench.reset(workload.sale, plan.inventory)
                    run = bench.run(workload, clients, plan.duration)
                    _say(
                        f"    {run.tps:,.0f} tps, p50 {run.latency_ms['p50']} ms, "
                        f"p99 {run.latency_ms['p99']} ms"
                    )
                    report.runs.append(run)
        finally:
            bench.pooler = None


# -- output -------------------------------------------------------------------


def _change(slowdown: float) -> str:
    return f"{abs(slowdown):.1%} " + ("slower" if slowdown > 0 else "faster")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _verdict(target: dict[str, Any]) -> str:
    if target["met"]:
        return "yes"
    return f"NO, {target['short_by']:.1%} short" if target["short_by"] else "NO"


def markdown(report: Report) -> str:
    m, s = report.machine, report.settings
    sync = "on" if s["synchronous_commit"] else "off"
    lines = [
        f"{m['cores']} cores, PostgreSQL {m['postgresql']}, synchronous_commit = {sync}, "
        f"{s['duration_s']} s per run, pgbench -M simple -j {s['pgbench_threads']}"
        + (
            f"; pooled runs through {m.get('pgbouncer') or 'PgBouncer'}, transaction mode, "
            f"{s['pooler_pool_size']} server connections"
            if s.get("pooler_clients")
            else ""
        ),
        "",
        "| workload | clients | claims/s | tps | avg ms | p50 ms | p99 ms "
        "| x hot row | x SKIP LOCKED | of SELECT 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {w.key: w.title for w in WORKLOADS + POOLED_WORKLOADS}
    titles.update({batched(n).key: batched(n).title for n in s.get("batch_sizes", [])})
    for run in report.runs:
        lat = run.latency_ms
        flag = " (ran out)" if run.ran_out else ""
        lines.append(
            f"| {titles[run.workload]}{flag} | {run.clients} | {run.claims_per_s:,.0f} | "
            f"{run.tps:,.0f} | {lat['avg']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
            f"{_times(report.ratio(run.workload, 'hot_row', run.clients))} | "
            f"{_times(report.ratio(run.workload, 'skip_locked', run.clients))} | "
            f"{_share(report.ratio(run.workload, 'select1', run.clients))} |"
        )
    lines += [
        "",
        "claims/s: transactions/s times the buyers per transaction (the batch size, else 1); "
        "latencies are per transaction. x hot row: against the hot row as a transaction, "
        "the baseline the bar is set on.",
    ]
    if report.sellout is not None:
        so = report.sellout
        lines += [
            "",
            f"Sell-out at {so.clients} clients: {so.units:,} units in {so.seconds:.2f} s"
            + ("" if so.sold_out else " (did not sell out)")
            + f"; first tenth {so.first_tenth_per_s:,.0f}/s, last tenth "
            f"{so.last_tenth_per_s:,.0f}/s ({_change(so.slowdown)}; "
            f"{_change(so.slowdown_vs_median)} than the median tenth). Claims/s by tenth: "
            + ", ".join(f"{rate:,.0f}" for rate in so.tenths_per_s)
            + ".",
        ]
    if report.standby:
        lines += bench_standby.markdown(report.standby, titles)
    lines += ["", "| target | clients | measured | met |", "|---|---:|---:|---|"]
    for target in report.targets():
        lines.append(
            f"| {target['target']} | {target['clients']} | {target['shown']} | {_verdict(target)} |"
        )
    return "\n".join(lines)


def _parse_counts(option: str, text: str, highest: int) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"{option}: expected numbers separated by commas, got {text!r}") from None
    if not values or not all(1 <= v <= highest for v in values):
        raise UsageError(f"{option}: each number must be from 1 to {highest}, got {text!r}")
    return values


def _parse_clients(text: str) -> tuple[int, ...]:
    return _parse_counts("--clients", text, MAX_CLIENTS)


def _parse_batch_sizes(text: str) -> tuple[int, ...]:
    # A batch of one is the single claim, which always runs.
    return _parse_counts("--batch-sizes", text, MAX_BATCH) if text.strip() else ()


def save(document: dict[str, Any], directory: Path, kind: str) -> Path:
    """Write the results as JSON under a name that says when and on how many cores."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory / f"{kind}-{stamp}-{document['machine']['cores']}cores.json"
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def chart_path(chart: Path, saved: Path | None, cores: int) -> Path:
    """--chart names a file, or a directory to put it in beside (and named like) the JSON."""
    if not chart.is_dir():
        return chart
    if saved is not None and saved.parent.resolve() == chart.resolve():
        return saved.with_suffix(".png")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return chart / f"claims-{stamp}-{cores}cores.png"


@bench_app.callback()
def _bench() -> None:
    """Measure intake against baselines on a throwaway local cluster."""


@bench_app.command()
def claims(
    clients: str = typer.Option(
        DEFAULT_CLIENTS, "--clients", help="Client counts, comma-separated (at most 1000)."
    ),
    batch_sizes: str = typer.Option(
        DEFAULT_BATCH_SIZES,
        "--batch-sizes",
        help="Users per claim_resources call, comma-separated ('' for none).",
    ),
    duration: int = typer.Option(15, "--duration", min=1, help="Seconds per pgbench run."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help=f"Smoke test: {QUICK_DURATION} s runs, {QUICK_CLIENTS} clients, small inventory, "
        f"batches of {QUICK_BATCH_SIZES[0]}.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of markdown."),
    keep: bool = typer.Option(
        False, "--keep", help="Keep the temp dir (pgbench logs, server log)."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Also save the results as JSON in DIR (e.g. benchmarks/results)."
    ),
    chart: Path | None = typer.Option(
        None,
        "--chart",
        help="Also draw claims/s by client count as a PNG: a file, or a directory "
        "(beside the JSON when it is --output's). Needs matplotlib (the 'bench' extra).",
    ),
    pooler: bool = typer.Option(
        False,
        "--pooler",
        help="Also run the single claim and SELECT 1 through PgBouncer in transaction mode "
        "(Debian's pgbouncer), at --pooler-clients, and judge them against the direct claim.",
    ),
    pooler_clients: str = typer.Option(
        DEFAULT_POOLER_CLIENTS,
        "--pooler-clients",
        help=f"Client counts through the pooler, comma-separated (at most {MAX_POOLER_CLIENTS}).",
    ),
    pooler_pool_size: int = typer.Option(
        DEFAULT_POOLER_POOL_SIZE,
        "--pooler-pool-size",
        min=1,
        max=MAX_CLIENTS,
        help="Server connections the pooler keeps for those clients.",
    ),
    standby: bool = typer.Option(
        False,
        "--standby",
        help="Last, give DB1 a synchronous streaming standby on this machine and run the "
        "single and batched claims again: claims/s with it over without.",
    ),
) -> None:
    """Claim throughput against SELECT 1, a hot row and literal SKIP LOCKED, with pgbench.

    Starts its own DB1 cluster (durable: synchronous_commit = on) in a temp
    dir, so it never touches an event's clusters. Every ratio is against
    baselines measured in the same run; batched claims are reported as
    claims/s (transactions/s x batch size) beside the single claim. With
    --pooler, thousands of clients claim through PgBouncer on a few server
    connections, as buyers reach a hosted DB1 (Supavisor's port 6543). With
    --standby, the claims run again with DB1's synchronous standby.
    """
    if chart is not None:
        # Before minutes of measuring, not after.
        bench_chart.require_matplotlib()
    pooled: tuple[int, ...] = ()
    if pooler:
        # Before minutes of measuring, not after.
        if pgbouncer_pooler.pgbouncer_path() is None:
            raise UsageError(
                "--pooler: pgbouncer is not installed (Debian: apt-get install pgbouncer)"
            )
        pooled = (
            (QUICK_CLIENTS,)
            if quick
            else _parse_counts("--pooler-clients", pooler_clients, MAX_POOLER_CLIENTS)
        )
    plan = (
        Plan(
            (QUICK_CLIENTS,),
            QUICK_DURATION,
            QUICK_INVENTORY,
            QUICK_SELLOUT_SECONDS,
            QUICK_WARMUP_SECONDS,
            QUICK_BATCH_SIZES,
            pooled,
            min(pooler_pool_size, QUICK_CLIENTS),
            standby,
        )
        if quick
        else Plan(
            _parse_clients(clients),
            duration,
            FULL_INVENTORY,
            SELLOUT_SECONDS,
            SELLOUT_WARMUP_SECONDS,
            _parse_batch_sizes(batch_sizes),
            pooled,
            pooler_pool_size,
            standby,
        )
    )
    workdir = _workdir()
    try:
        report = measure(plan, workdir)
    finally:
        if keep:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    document = report.as_json()
    saved = None
    if output is not None:
        saved = save(document, output, "claims")
        _say(f"saved {saved}")
    if chart is not None:
        drawn = bench_chart.draw_claims(document, chart_path(chart, saved, report.machine["cores"]))
        _say(f"drew {drawn}")
    if as_json:
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        typer.echo(markdown(report))


@contextmanager
def throwaway_event(
    workdir: Path, pool_id: str, units: int
) -> Iterator[tuple[EmbeddedClusters, str]]:
    """Durable embedded DB1 and DB2 under workdir, provisioned by `intake up` with one
    pool of `units`; yields the clusters and DB1's DSN, and removes them afterwards."""
    clusters = EmbeddedClusters(workdir / "clusters", config.EmbeddedSettings())
    started = clusters.ensure(("db1", "db2"))
    try:
        settings = config.parse(
            {
                "db1": {"dsn": started["db1"].dsn},
                "db2": {"dsn": started["db2"].dsn, "install_example_ledger": True},
                "pools": [
                    {
                        "pool_id": pool_id,
                        "inventory": units,
                        "validation_webhook_url": "http://127.0.0.1:9/validate",
                    }
                ],
            },
            workdir / "intake.yaml",
        )
        lifecycle.up(settings)
        yield clusters, started["db1"].dsn
    finally:
        clusters.stop()
