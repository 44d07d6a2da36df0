"""`intake bench claims`: the claim path's throughput, measured with pgbench.

Every figure is relative to baselines measured in the same run, on the same
throwaway cluster, so a ratio never mixes machines or moods: `SELECT 1`, the
ceiling of what the server and pgbench can turn round on this machine; a hot
row, one counter every buyer decrements (as a transaction, and at its best in
one statement); the literal `SELECT … FOR UPDATE SKIP LOCKED` over a partial
index; the durable intent insert alone, the floor under any claim that queues
one; the claim's bare shape (a number, that unit, the intent) without its
checks; and intake's own claim, one buyer per statement and in batches
(`claim_resources`, reported as claims/s: transactions/s times batch size). A
last run sells a pool out and compares how fast its first and last tenth of
units went.

The cluster and the pgbench runner are the bench library's
(tools/bench/common/pgbench.py); what is here is the workloads and the bar.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from intake_cli.engine.claims import MAX_BATCH
from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.tools import pooler as pgbouncer_pooler
from intake_cli.tools.bench import chart as bench_chart
from intake_cli.tools.bench import standby as bench_standby
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.options import json_option, output_option, parse_numbers
from intake_cli.tools.bench.common.pgbench import (
    CLAIM,
    MAX_CLIENTS,
    PGBENCH_THREADS,
    POOL_ID,
    SPARE_CONNECTIONS,
    Bench,
    Run,
    Workload,
    bench_db1,
    one,
    script,
)
from intake_cli.tools.bench.common.results import (
    Target,
    judged_on_median_round,
    measured_in_rounds,
    publish,
    say,
    share,
    targets_json,
    targets_markdown,
    times,
)

DEFAULT_CLIENTS = "64,256,1000"
DEFAULT_BATCH_SIZES = "10,50,100"
# Enough that no throughput run sells out: even the SELECT 1 ceiling of a
# fast machine would not get through it in the default 15 s.
FULL_INVENTORY = 2_000_000
# Batched claims run at 30,000-70,000/s: a quick run's 1 s must not sell out.
QUICK_INVENTORY = 150_000
# A sell-out sized to last this long at the measured claim rate: long enough
# for the pool's indexes and the queue to grow, short enough to repeat.
SELLOUT_SECONDS = 6
QUICK_SELLOUT_SECONDS = 1
# How long the herd knocks on the paused pool before the sale opens.
SELLOUT_WARMUP_SECONDS = 2.0
QUICK_WARMUP_SECONDS = 0.5
CONNECT_TIMEOUT_S = 60
QUICK_CLIENTS = 16
QUICK_DURATION = 1
QUICK_BATCH_SIZES = (10,)

# The bar, judged at BAR_CLIENTS (or the largest client count of a run
# without it), every ratio against baselines of the same run.
BAR_CLIENTS = 256
TARGET_CLAIMS_PER_S = 6000.0
TARGET_VS_HOT_ROW = 10.0
TARGET_VS_SKIP_LOCKED = 3.0
TARGET_SELLOUT_LAST_VS_FIRST = 0.90
TARGET_BATCHED_PER_S = 50_000.0
# Every claim pays one durable intent insert and its commit; what it does
# besides may cost at most as much again.
TARGET_VS_INTENT_INSERT = 0.50

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
    Workload("intent_insert", "durable intent insert", "intent_insert.sql", None),
    # Sells the pool's own units, so it is seeded like the claim.
    Workload("number_unit_intent", "number + unit + intent", "number_unit_intent.sql", "claim"),
    CLAIM,
)
BASELINES = (
    "select1",
    "hot_row",
    "hot_row_one_statement",
    "skip_locked",
    "intent_insert",
    "number_unit_intent",
)
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

    def targets(self) -> list[Target]:
        clients = bar_clients(self.settings["clients"])

        def at_least(
            what: str, value: float, threshold: float, shown: str, **detail: Any
        ) -> Target:
            return Target.at_least(what, value, threshold, shown, clients=clients, **detail)

        rate = self.claims_per_s("claim", clients) or 0.0
        vs_hot = self.ratio("claim", "hot_row", clients) or 0.0
        vs_skip = self.ratio("claim", "skip_locked", clients) or 0.0
        vs_intent = self.ratio("claim", "intent_insert", clients) or 0.0
        found = [
            at_least(
                f"claim >= {TARGET_CLAIMS_PER_S:,.0f} claims/s",
                rate,
                TARGET_CLAIMS_PER_S,
                f"{rate:,.0f}/s",
            ),
            at_least(
                f"claim >= {TARGET_VS_HOT_ROW:g}x hot row (transaction)",
                vs_hot,
                TARGET_VS_HOT_ROW,
                times(vs_hot),
            ),
            at_least(
                f"claim >= {TARGET_VS_SKIP_LOCKED:g}x literal SKIP LOCKED",
                vs_skip,
                TARGET_VS_SKIP_LOCKED,
                times(vs_skip),
            ),
            at_least(
                f"claim >= {TARGET_VS_INTENT_INSERT:.0%} of the durable intent insert",
                vs_intent,
                TARGET_VS_INTENT_INSERT,
                share(vs_intent),
            ),
        ]
        if self.sellout is not None:
            so = self.sellout
            kept = so.last_tenth_per_s / so.first_tenth_per_s
            found.append(
                Target.at_least(
                    f"sell-out: last tenth >= {TARGET_SELLOUT_LAST_VS_FIRST:.0%} "
                    "of the first's rate",
                    kept,
                    TARGET_SELLOUT_LAST_VS_FIRST,
                    share(kept),
                    clients=so.clients,
                ).unless(so.sold_out, "not sold out")
            )
        sizes = self.settings.get("batch_sizes") or []
        if sizes:
            key = batched(max(sizes)).key
            value = self.claims_per_s(key, clients) or 0.0
            shown, detail = f"{value:,.0f}/s", {}
            # A backend that batches needs few connections: where another
            # client count of the run did better, say so beside the verdict.
            best = max((r for r in self.runs if r.workload == key), key=lambda r: r.claims_per_s)
            if best.clients != clients:
                detail["best"] = {"clients": best.clients, "claims_per_s": best.claims_per_s}
                shown += f" ({best.claims_per_s:,.0f}/s at {best.clients} clients)"
            found.append(
                at_least(
                    f"batched claims (x{max(sizes)}) >= {TARGET_BATCHED_PER_S:,.0f} claims/s",
                    value,
                    TARGET_BATCHED_PER_S,
                    shown,
                    **detail,
                )
            )
        pooled = self.settings.get("pooler_clients") or []
        if pooled and rate:
            most = max(pooled)
            kept = (self.claims_per_s("claim_pooler", most) or 0.0) / rate
            found.append(
                Target.at_least(
                    f"claim via PgBouncer at {most} clients >= {TARGET_POOLED_VS_DIRECT:.0%} "
                    f"of the direct claim at {clients}",
                    kept,
                    TARGET_POOLED_VS_DIRECT,
                    share(kept),
                    clients=most,
                )
            )
        judged = bench_standby.judged(self.standby or [], clients)
        if judged is not None:
            found.append(
                at_least(
                    f"{judged.workload} with a synchronous standby >= "
                    f"{bench_standby.TARGET_WITH_VS_WITHOUT:.0%} of without",
                    judged.ratio,
                    bench_standby.TARGET_WITH_VS_WITHOUT,
                    share(judged.ratio),
                ).unless(judged.verdict == "synchronous", f"replication: {judged.verdict}")
            )
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "runs": [asdict(r) for r in self.runs],
            "ratios": self.ratios(),
            "sellout": self.sellout.as_json() if self.sellout else None,
            "standby": None if self.standby is None else [asdict(r) for r in self.standby],
            "targets": targets_json(self.targets()),
        }


def tenth_rates(tenths: list[tuple[int, int, float, float]]) -> list[float]:
    """Claims/s within each tenth: its units after the first, over its span."""
    return [
        round((units - 1) / (last - first), 1) if last > first else math.inf
        for _, units, first, last in tenths
    ]


def sellout(bench: Bench, clients: int, claim_tps: float, seconds: int, warmup: float) -> Sellout:
    """Sell a pool sized for `seconds` of claims out, and time it by tenths."""
    units = max(1000, round(claim_tps * seconds))
    bench.reset("claim", units)
    # The herd connects and knocks on the paused pool first: a real drop
    # opens on warm connections, and hundreds of backends starting cold
    # would otherwise slow the first tenth and flatter the comparison.
    _pause(bench, True)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    # Twice the expected time, so that a sale which slows down still ends.
    pending = bench.start(CLAIM, clients, warmup + 2 * seconds)
    try:
        while one(bench.conn, "pgbench_connected.sql") < clients:
            if pending.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(warmup)
    finally:
        _pause(bench, False)
    bench.finish(pending)
    tenths = bench.conn.execute(script("sellout_pace.sql"), {"pool_id": POOL_ID}).fetchall()
    if len(tenths) < 10:
        raise IntakeError(f"the sell-out run claimed too few units to time in tenths: {tenths}")
    rows = [(int(t), int(n), float(first), float(last)) for t, n, first, last in tenths]
    return Sellout(
        clients=clients,
        units=sum(n for _, n, _, _ in rows),
        sold_out=bench.ran_out("claim"),
        warmup_s=warmup,
        seconds=round(rows[-1][3] - rows[0][2], 3),
        tenths_per_s=tenth_rates(rows),
    )


def _pause(bench: Bench, paused: bool) -> None:
    bench.conn.execute(script("pause.sql"), {"paused": paused, "pool_id": POOL_ID})


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
        report = Report(
            machine=bench.machine(),
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
                say(f"[{step}/{total}] {workload.title}, {clients} clients, {plan.duration} s")
                report.runs.append(_measure_one(bench, workload, clients, plan))
        claim_tps = report.claims_per_s("claim", plan.bar_clients) or 0.0
        say(
            f"[{total}/{total}] sell-out, {plan.bar_clients} clients, "
            f"~{plan.sellout_seconds} s of inventory"
        )
        report.sellout = sellout(
            bench, plan.bar_clients, claim_tps, plan.sellout_seconds, plan.warmup_seconds
        )
        if plan.pooler_clients:
            _measure_pooled(bench, plan, report)
        if plan.standby:
            claims = (CLAIM, *(batched(size) for size in plan.batch_sizes))
            report.standby = bench_standby.measure(bench, plan, report, claims)
        return report


def _measure_one(bench: Bench, workload: Workload, clients: int, plan: Plan) -> Run:
    bench.reset(workload.sale, plan.inventory)
    run = bench.run(workload, clients, plan.duration)
    per_s = f" = {run.claims_per_s:,.0f} claims/s" if run.batch > 1 else ""
    say(
        f"    {run.tps:,.0f} tps{per_s}, p50 {run.latency_ms['p50']} ms, "
        f"p99 {run.latency_ms['p99']} ms" + (" (ran out of inventory)" if run.ran_out else "")
    )
    return run


def _measure_pooled(bench: Bench, plan: Plan, report: Report) -> None:
    """The single claim and SELECT 1 through PgBouncer, after the direct runs."""
    with pgbouncer_pooler.pgbouncer(bench.cluster, pool_size=plan.pooler_pool_size) as pooler:
        report.machine["pgbouncer"] = pgbouncer_pooler.version()
        bench.pooler = pooler
        try:
            for clients in plan.pooler_clients:
                for workload in POOLED_WORKLOADS:
                    say(
                        f"[pooler] {workload.title}, {clients} clients on "
                        f"{plan.pooler_pool_size} server connections, {plan.duration} s"
                    )
                    report.runs.append(_measure_one(bench, workload, clients, plan))
        finally:
            bench.pooler = None


# -- output -------------------------------------------------------------------


def _change(slowdown: float) -> str:
    return f"{abs(slowdown):.1%} " + ("slower" if slowdown > 0 else "faster")


def markdown(report: Report, judged: list[dict[str, Any]] | None = None) -> str:
    """The report as tables; its bars as `judged` (saved targets of several rounds) when given."""
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
        "| x hot row | x SKIP LOCKED | of SELECT 1 | of intent insert |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {w.key: w.title for w in WORKLOADS + POOLED_WORKLOADS}
    titles.update({batched(n).key: batched(n).title for n in s.get("batch_sizes", [])})
    for run in report.runs:
        lat = run.latency_ms
        flag = " (ran out)" if run.ran_out else ""
        lines.append(
            f"| {titles[run.workload]}{flag} | {run.clients} | {run.claims_per_s:,.0f} | "
            f"{run.tps:,.0f} | {lat['avg']:.2f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
            f"{times(report.ratio(run.workload, 'hot_row', run.clients))} | "
            f"{times(report.ratio(run.workload, 'skip_locked', run.clients))} | "
            f"{share(report.ratio(run.workload, 'select1', run.clients))} | "
            f"{share(report.ratio(run.workload, 'intent_insert', run.clients))} |"
        )
    lines += [
        "",
        "claims/s: transactions/s times the buyers per transaction (the batch size, else 1); "
        "latencies are per transaction. x hot row: against the hot row as a transaction, "
        "the baseline the bar is set on. of intent insert: against one durable insert of "
        "the claim's intent, the floor under every claim.",
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
    if judged is not None:
        lines += [
            "",
            "Each bar is judged on its median round; the tables above are the last round's.",
        ]
    found = targets_json(report.targets()) if judged is None else judged
    lines += ["", targets_markdown(found, columns=("clients",))]
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    # A batch of one is the single claim, which always runs.
    return parse_numbers("--batch-sizes", text, 1, MAX_BATCH) if text.strip() else ()


def claims_command(
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
    as_json: bool = json_option(),
    keep: bool = typer.Option(
        False, "--keep", help="Keep the temp dir (pgbench logs, server log)."
    ),
    rounds: int = typer.Option(
        1,
        "--rounds",
        min=1,
        max=9,
        help="Measure everything this many times and judge each bar on its median round: "
        "one round's ratios move with the machine's speed from one minute to the next.",
    ),
    output: Path | None = output_option(),
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
    # What could stop the command is checked before minutes of measuring, not after.
    if chart is not None:
        bench_chart.require_matplotlib()
    pooled: tuple[int, ...] = ()
    if pooler:
        if pgbouncer_pooler.pgbouncer_path() is None:
            raise UsageError(
                "--pooler: pgbouncer is not installed (Debian: apt-get install pgbouncer)"
            )
        pooled = (
            (QUICK_CLIENTS,)
            if quick
            else parse_numbers("--pooler-clients", pooler_clients, 1, MAX_POOLER_CLIENTS)
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
            parse_numbers("--clients", clients, 1, MAX_CLIENTS),
            duration,
            FULL_INVENTORY,
            SELLOUT_SECONDS,
            SELLOUT_WARMUP_SECONDS,
            parse_batch_sizes(batch_sizes),
            pooled,
            pooler_pool_size,
            standby,
        )
    )
    with events.workdir("claims", keep) as workdir:
        reports = measured_in_rounds(workdir, rounds, lambda where: measure(plan, where))
    report = reports[-1]
    document = judged_on_median_round(
        [r.as_json() for r in reports], [r.targets() for r in reports]
    )
    judged = document["targets"] if rounds > 1 else None
    saved = publish(document, "claims", output, as_json, lambda: markdown(report, judged))
    if chart is not None:
        path = bench_chart.chart_path(chart, saved, "claims", report.machine["cores"])
        say(f"drew {bench_chart.draw_claims(document, path)}")
