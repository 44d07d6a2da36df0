"""`intake bench claims`: the claim path's throughput, measured with pgbench.

Every figure is relative to baselines measured in the same run, on the same
throwaway cluster, so a ratio never mixes machines or moods: (c) `SELECT 1`,
the ceiling of what the server and pgbench can turn round; (a) a hot row, one
counter every buyer decrements; (b) the literal `SELECT … FOR UPDATE SKIP
LOCKED` over a partial index; (i) intake's own claim. A last run sells a pool
out and compares how fast its first and last tenth of units went.

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
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import typer

from intake_cli import pools, schema
from intake_cli.config import EmbeddedSettings, PoolSettings
from intake_cli.embedded import DATABASE, SUPERUSER, Cluster, EmbeddedClusters, pg_bindir
from intake_cli.errors import IntakeError, UsageError
from intake_cli.sqlfiles import queries, sql_root

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
# Headroom above the clients for our own connection and autovacuum.
SPARE_CONNECTIONS = 10
FULL_INVENTORY = 2_000_000
QUICK_INVENTORY = 50_000
# A sell-out sized to last this long at the measured claim rate: long enough
# for the pool's indexes and the queue to grow, short enough to repeat.
SELLOUT_SECONDS = 6
QUICK_SELLOUT_SECONDS = 1
QUICK_CLIENTS = 16
QUICK_DURATION = 2

# The bar, at the largest client count of the run.
TARGET_VS_HOT_ROW = 10.0
TARGET_VS_SELECT1 = 0.10
TARGET_SELLOUT_SLOWDOWN = 0.10


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    script: str


WORKLOADS = (
    Workload("select1", "SELECT 1 (ceiling)", "select1.sql"),
    Workload("hot_row", "hot row", "hot_row.sql"),
    Workload("skip_locked", "literal SKIP LOCKED", "skip_locked.sql"),
    Workload("claim", "intake claim", "claim.sql"),
)


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    duration: int
    inventory: int
    sellout_seconds: int

    @property
    def top_clients(self) -> int:
        return max(self.clients)


@dataclass
class Run:
    workload: str
    clients: int
    duration_s: int
    tps: float
    transactions: int
    failed: int
    latency_ms: dict[str, float]
    # The pool ran dry during a throughput run: the later answers were the
    # cheap "sold out", so the figure overstates the claim rate.
    ran_out: bool = False


@dataclass
class Sellout:
    clients: int
    units: int
    tenth: int
    first_tenth_per_s: float
    last_tenth_per_s: float
    slowdown: float
    sold_out: bool


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    sellout: Sellout | None = None

    def tps(self, workload: str, clients: int) -> float:
        return next(r.tps for r in self.runs if r.workload == workload and r.clients == clients)

    def ratios(self) -> list[dict[str, Any]]:
        rows = []
        for clients in self.settings["clients"]:
            hot, ceiling = self.tps("hot_row", clients), self.tps("select1", clients)
            for key in ("skip_locked", "claim"):
                tps = self.tps(key, clients)
                rows.append(
                    {
                        "workload": key,
                        "clients": clients,
                        "vs_hot_row": tps / hot if hot else None,
                        "vs_select1": tps / ceiling if ceiling else None,
                    }
                )
        return rows

    def targets(self) -> list[dict[str, Any]]:
        clients = max(self.settings["clients"])
        claim = self.tps("claim", clients)
        hot, ceiling = self.tps("hot_row", clients), self.tps("select1", clients)
        found = [
            {
                "target": "claim >= 10x hot row",
                "clients": clients,
                "value": claim / hot if hot else None,
                "met": bool(hot) and claim >= TARGET_VS_HOT_ROW * hot,
            },
            {
                "target": "claim >= 10% of SELECT 1",
                "clients": clients,
                "value": claim / ceiling if ceiling else None,
                "met": bool(ceiling) and claim >= TARGET_VS_SELECT1 * ceiling,
            },
        ]
        if self.sellout is not None:
            found.append(
                {
                    "target": "last tenth of a sell-out <= 10% slower than the first",
                    "clients": self.sellout.clients,
                    "value": self.sellout.slowdown,
                    "met": self.sellout.sold_out
                    and self.sellout.slowdown <= TARGET_SELLOUT_SLOWDOWN,
                }
            )
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "runs": [asdict(r) for r in self.runs],
            "ratios": self.ratios(),
            "sellout": asdict(self.sellout) if self.sellout else None,
            "targets": self.targets(),
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


# -- the bench ----------------------------------------------------------------


class Bench:
    """One throwaway DB1 cluster, its connection, and the runs made on it."""

    def __init__(self, workdir: Path, cluster: Cluster, conn: psycopg.Connection) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.conn = conn
        self.pgbench_bin = pgbench_path()

    def provision(self) -> None:
        schema.apply_db1(self.conn, QUEUE, f"{QUEUE}_dlq")
        self.conn.execute(_script("baselines.sql"))

    def reset(self, workload: str, units: int) -> None:
        """Empty every sale and seed the next one."""
        self.conn.execute(
            "select bench.reset(%(workload)s, %(units)s)", {"workload": workload, "units": units}
        )
        if workload == "claim":
            pool = _pool(units)
            with self.conn.transaction():
                pools.reconcile(self.conn, (pool,))
            pools.seed(self.conn, pool)
        # One run's dead tuples and unset hint bits must not slow the next,
        # and the checkpoint keeps one run's full-page writes out of another.
        self.conn.execute("vacuum analyze")
        self.conn.execute("checkpoint")

    def run(self, workload: Workload, clients: int, seconds: int) -> Run:
        logs = self.workdir / "logs" / f"{workload.key}-c{clients}-{time.time_ns()}"
        logs.mkdir(parents=True)
        prefix = logs / "tx"
        args = [
            str(self.pgbench_bin),
            "-h", "127.0.0.1",
            "-p", str(self.cluster.port),
            "-U", SUPERUSER,
            "-n",
            "-M", "simple",
            "-f", str(_script_path(workload.script)),
            "-c", str(clients),
            "-j", str(min(PGBENCH_THREADS, clients)),
            "-T", str(seconds),
            "--log",
            f"--log-prefix={prefix}",
            DATABASE,
        ]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, cwd=logs)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise IntakeError(f"pgbench ({workload.key}, {clients} clients) failed: {tail}")
        tps, average, processed, failed = parse_summary(proc.stdout)
        latencies = sorted(log_latencies_us(prefix))
        return Run(
            workload=workload.key,
            clients=clients,
            duration_s=seconds,
            tps=round(tps, 1),
            transactions=processed,
            failed=failed,
            latency_ms={
                "avg": round(average, 3),
                "p50": round(percentile(latencies, 0.50) / 1000, 3),
                "p99": round(percentile(latencies, 0.99) / 1000, 3),
            },
            ran_out=self.ran_out(workload.key),
        )

    def ran_out(self, workload: str) -> bool:
        if workload == "select1":
            return False
        left = self.conn.execute(_script("units_left.sql")).fetchone()
        names = ("hot_row", "skip_locked", "claim")
        return left is not None and not dict(zip(names, left, strict=True))[workload]

    def sellout(self, clients: int, claim_tps: float, seconds: int) -> Sellout:
        units = max(1000, round(claim_tps * seconds))
        self.reset("claim", units)
        # Twice the expected time, so that a sale which slows down still ends.
        self.run(_workload("claim"), clients, seconds * 2)
        row = self.conn.execute(_script("sellout_pace.sql"), {"pool_id": POOL_ID}).fetchone()
        if row is None:
            raise IntakeError("the sell-out run claimed no units")
        claimed, tenth, first_s, last_s, left_over = row
        first_rate = (tenth - 1) / float(first_s) if first_s else math.inf
        last_rate = (tenth - 1) / float(last_s) if last_s else math.inf
        return Sellout(
            clients=clients,
            units=int(claimed),
            tenth=int(tenth),
            first_tenth_per_s=round(first_rate, 1),
            last_tenth_per_s=round(last_rate, 1),
            slowdown=round(1 - last_rate / first_rate, 4),
            sold_out=left_over == 0,
        )


def _script_path(name: str) -> Path:
    return sql_root() / "bench" / name


def _script(name: str) -> str:
    return _script_path(name).read_text(encoding="utf-8")


def _workload(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


def _pool(units: int) -> PoolSettings:
    # The webhook is never called: the bench measures claims, not the drain.
    return PoolSettings(POOL_ID, units, "http://127.0.0.1:9/validate")


def _machine(conn: psycopg.Connection, pgbench: Path) -> dict[str, Any]:
    version = conn.execute("show server_version").fetchone()
    pgbench_version = subprocess.run(
        [str(pgbench), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        # The cores this process may use, which is what pgbench and the
        # server share (nproc), not what the host has.
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
        max_connections=plan.top_clients + SPARE_CONNECTIONS, synchronous_commit=True
    )
    clusters = EmbeddedClusters(workdir / "cluster", settings)
    try:
        cluster = clusters.ensure(("db1",))["db1"]
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            bench = Bench(workdir, cluster, conn)
            bench.provision()
            report = Report(
                machine=_machine(conn, bench.pgbench_bin),
                settings={
                    "clients": list(plan.clients),
                    "duration_s": plan.duration,
                    "inventory": plan.inventory,
                    "sellout_seconds": plan.sellout_seconds,
                    "pgbench_threads": PGBENCH_THREADS,
                    "protocol": "simple",
                    "synchronous_commit": settings.synchronous_commit,
                    "max_connections": settings.max_connections,
                    "shared_buffers": settings.shared_buffers,
                },
            )
            total = len(plan.clients) * len(WORKLOADS) + 1
            step = 0
            for clients in plan.clients:
                for workload in WORKLOADS:
                    step += 1
                    _say(f"[{step}/{total}] {workload.title}, {clients} clients, {plan.duration} s")
                    bench.reset(workload.key, plan.inventory)
                    run = bench.run(workload, clients, plan.duration)
                    _say(
                        f"    {run.tps:,.0f} tps, p50 {run.latency_ms['p50']} ms, "
                        f"p99 {run.latency_ms['p99']} ms"
                        + (" (ran out of inventory)" if run.ran_out else "")
                    )
                    report.runs.append(run)
            claim_tps = report.tps("claim", plan.top_clients)
            _say(
                f"[{total}/{total}] sell-out, {plan.top_clients} clients, "
                f"~{plan.sellout_seconds} s of inventory"
            )
            report.sellout = bench.sellout(plan.top_clients, claim_tps, plan.sellout_seconds)
        return report
    finally:
        if (workdir / "cluster").exists():
            log = workdir / "cluster" / "db1.log"
            if log.exists():
                shutil.copy(log, workdir / "db1.log")
        clusters.stop()


# -- output -------------------------------------------------------------------


def _ratio(value: float | None, as_percent: bool) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%" if as_percent else f"{value:.1f}×"


def markdown(report: Report) -> str:
    m, s = report.machine, report.settings
    sync = "on" if s["synchronous_commit"] else "off"
    lines = [
        f"{m['cores']} cores, PostgreSQL {m['postgresql']}, synchronous_commit = {sync}, "
        f"{s['duration_s']} s per run, pgbench -M simple -j {s['pgbench_threads']}",
        "",
        "| workload | clients | tps | avg ms | p50 ms | p99 ms | × hot row | of SELECT 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {w.key: w.title for w in WORKLOADS}
    for run in report.runs:
        hot = report.tps("hot_row", run.clients)
        ceiling = report.tps("select1", run.clients)
        lat = run.latency_ms
        flag = " ⚠ ran out" if run.ran_out else ""
        lines.append(
            f"| {titles[run.workload]}{flag} | {run.clients} | {run.tps:,.0f} | "
            f"{lat['avg']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
            f"{_ratio(run.tps / hot if hot else None, False)} | "
            f"{_ratio(run.tps / ceiling if ceiling else None, True)} |"
        )
    if report.sellout is not None:
        so = report.sellout
        lines += [
            "",
            f"Sell-out at {so.clients} clients: {so.units:,} units"
            + ("" if so.sold_out else " (did not sell out)")
            + f"; first tenth {so.first_tenth_per_s:,.0f}/s, last tenth "
            f"{so.last_tenth_per_s:,.0f}/s ({so.slowdown * 100:+.1f}% slower).",
        ]
    lines += ["", "| target | clients | measured | met |", "|---|---:|---:|---|"]
    for target in report.targets():
        value = target["value"]
        shown = (
            "–"
            if value is None
            else f"{value:.1f}×"
            if "hot row" in target["target"]
            else f"{value * 100:.1f}%"
        )
        lines.append(
            f"| {target['target']} | {target['clients']} | {shown} | "
            f"{'yes' if target['met'] else 'NO'} |"
        )
    return "\n".join(lines)


def _parse_clients(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"--clients: expected numbers separated by commas, got {text!r}") from None
    if not values or not all(1 <= v <= 1000 for v in values):
        raise UsageError(f"--clients: each count must be from 1 to 1000, got {text!r}")
    return values


def _save(document: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory / f"claims-{stamp}-{document['machine']['cores']}cores.json"
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


@bench_app.callback()
def _bench() -> None:
    """Measure intake against baselines on a throwaway local cluster."""


@bench_app.command()
def claims(
    clients: str = typer.Option("64,256", "--clients", help="Client counts, comma-separated."),
    duration: int = typer.Option(15, "--duration", min=1, help="Seconds per pgbench run."),
    quick: bool = typer.Option(
        False, "--quick", help=f"Smoke test: {QUICK_DURATION} s runs, {QUICK_CLIENTS} clients."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of markdown."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp dir (pgbench logs, server log)."),
    output: Path | None = typer.Option(
        None, "--output", help="Also save the results as JSON in DIR (benchmarks/results)."
    ),
) -> None:
    """Claim throughput against SELECT 1, a hot row and literal SKIP LOCKED, with pgbench.

    Starts its own DB1 cluster (durable: synchronous_commit = on) in a temp
    dir, so it never touches an event's clusters. Every ratio is against
    baselines measured in the same run.
    """
    plan = (
        Plan((QUICK_CLIENTS,), QUICK_DURATION, QUICK_INVENTORY, QUICK_SELLOUT_SECONDS)
        if quick
        else Plan(_parse_clients(clients), duration, FULL_INVENTORY, SELLOUT_SECONDS)
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
    if output is not None:
        _say(f"saved {_save(document, output)}")
    if as_json:
        typer.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        typer.echo(markdown(report))
