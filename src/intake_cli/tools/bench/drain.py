"""`intake bench drain`: intents/s end to end per `intake drain` process, and where the time goes.

Each scenario gets fresh DB1 and DB2 databases on durable embedded clusters,
a seeded pool, N claims, the test webhook (one or several processes on one
port, answering at once or after a delay) and 1 or more real `intake drain`
processes. The run is sized so every slot processes many batches, and the
rate is also taken over the steady state alone (from the 10th to the 90th
percent archived), so start-up and the tail do not decide it.

Beside the rate, from the same run:
- the webhook's own ceiling and DB2's own ceiling (the commit RPC called
  directly at the batch size), each measured by several client processes;
- per-phase time from the workers (read, webhook, recording answers, DB2
  commit, DB1 finish), which each worker writes on exit when asked
  (engine/phases.py);
- the top wait events of both clusters' backends, sampled from
  pg_stat_activity while the drain runs;
- machine-wide CPU per intent, and how much of it the workers (the drain
  processes themselves, `intake drain` or the bare drain, from /proc) and
  the webhook spent.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import typer

from intake_cli.engine import claims, lifecycle
from intake_cli.engine.drain import ledger, phases
from intake_cli.platform import config
from intake_cli.platform.embedded import Cluster
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.bench import bare_drain
from intake_cli.tools.bench.ceilings import db2_ceiling, webhook_ceiling
from intake_cli.tools.bench.common import cpu, events
from intake_cli.tools.bench.common.cpu import CpuSample
from intake_cli.tools.bench.common.events import POOL
from intake_cli.tools.bench.common.options import (
    json_option,
    output_option,
    parse_numbers,
    webhook_delays_ms,
)
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    median_of_rounds,
    publish,
    targets_json,
    targets_markdown,
)
from intake_cli.tools.bench.waits import WaitSampler
from intake_cli.tools.bench.webhook_fleet import WebhookFleet, default_processes

# Beyond what one machine runs: the bound catches a mistyped list.
MAX_PROCESSES = 64
# The steady state: from this share of the intents archived to that one.
STEADY = (0.1, 0.9)
# Top-level phases of a slot's batch, one after the other; the others are
# parts of them (db1_mark of webhook, db2_commit and commit_tokens of commit).
SLOT_PHASES = ("read", "validate", "commit", "finish")


@dataclass(frozen=True)
class Scenario:
    processes: int
    webhook_delay_ms: int
    # A source tree (with src/ and sql/) whose `intake drain` runs instead of
    # this one: the before of a before/after measured in one run.
    baseline: Path | None = None
    # The bare Python drain (tools/bench/bare_drain.py) instead of `intake drain`.
    bare: bool = False

    @property
    def code(self) -> str:
        if self.bare:
            return "bare Python drain"
        return f"baseline {self.baseline}" if self.baseline else "this tree"


@dataclass(frozen=True)
class Tick:
    """One look at the run: seconds since the workers started, intents archived, machine CPU."""

    at: float
    done: int
    cpu: CpuSample
    # CPU seconds so far of our own parts: workers, webhook, db1, db2.
    parts: dict[str, float]


@dataclass(frozen=True)
class Steady:
    per_sec: float
    cpu_ms_per_intent: float
    machine_busy: float
    part_ms_per_intent: dict[str, float]


def steady_state(timeline: list[Tick], intents: int) -> Steady | None:
    """The run between STEADY[0] and STEADY[1] of the intents archived: no start, no tail.

    The rate is interpolated between looks; the CPU is taken between the
    first look at or past the start and the last one at or before the end.
    """

    def when(target: float) -> float | None:
        for a, b in itertools.pairwise(timeline):
            if a.done <= target <= b.done and b.done > a.done:
                return a.at + (b.at - a.at) * (target - a.done) / (b.done - a.done)
        return None

    low, high = (share * intents for share in STEADY)
    start, end = when(low), when(high)
    if start is None or end is None or end <= start:
        return None
    inside = [t for t in timeline if low <= t.done <= high]
    first, last = (inside[0], inside[-1]) if inside else (timeline[0], timeline[-1])
    if last.done <= first.done:
        first, last = timeline[0], timeline[-1]
    busy = last.cpu.busy - first.cpu.busy
    total = last.cpu.total - first.cpu.total
    done = last.done - first.done
    parts = {name: (last.parts[name] - first.parts[name]) / done * 1000 for name in last.parts}
    return Steady(
        per_sec=(high - low) / (end - start),
        cpu_ms_per_intent=busy / done * 1000,
        machine_busy=busy / total if total else 0.0,
        part_ms_per_intent={
            **{k: round(v, 3) for k, v in parts.items()},
            "ours": round(sum(parts.values()), 3),
        },
    )


@dataclass
class DrainResult:
    scenario: Scenario
    intents: int
    seconds: float
    cpu: CpuSample
    steady: Steady | None = None
    webhook_ceiling_per_sec: float = 0.0
    db2_ceiling_per_sec: float = 0.0
    whole_run_parts: dict[str, float] = field(default_factory=dict)
    phases: dict[str, Any] = field(default_factory=dict)
    waits: dict[str, Any] = field(default_factory=dict)
    webhook_processes: int = 1
    # Which of the run's rounds (from 1) measured it.
    round_no: int = 1

    @property
    def per_sec(self) -> float:
        return self.intents / self.seconds

    @property
    def steady_per_sec(self) -> float | None:
        return self.steady.per_sec if self.steady else None

    @property
    def cpu_ms_per_intent(self) -> float:
        """Machine-wide CPU per intent: the steady state's when there is one, else the run's."""
        if self.steady:
            return self.steady.cpu_ms_per_intent
        return self.cpu.busy / self.intents * 1000

    @property
    def worker_cpu_ms_per_intent(self) -> float:
        """The drain processes' own CPU per intent (steady state when there is one), from
        /proc: what others running on a shared machine do not inflate."""
        if self.steady:
            return self.steady.part_ms_per_intent["workers"]
        return self.whole_run_parts.get("workers", 0.0) / self.intents * 1000

    @property
    def machine_busy(self) -> float:
        return self.steady.machine_busy if self.steady else self.cpu.busy_share

    @property
    def machine_ceiling_per_sec(self) -> float:
        """Intents/s if every core did nothing but this, at the CPU cost measured."""
        return (os.cpu_count() or 1) / (self.cpu_ms_per_intent / 1000)

    def limit(self) -> str:
        """What the steady rate is nearest to using up (a hint from this run, not a proof)."""
        rate = self.steady_per_sec or self.per_sec
        used = {"machine CPU": self.machine_busy}
        if self.webhook_ceiling_per_sec:
            used["webhook"] = rate / self.webhook_ceiling_per_sec
        if self.db2_ceiling_per_sec:
            used["DB2"] = rate / self.db2_ceiling_per_sec
        name, share = max(used.items(), key=lambda kv: kv[1])
        if share >= 0.8:
            return f"{name} ({share:.0%} used)"
        return "the drain itself (every measured ceiling under 80% used)"

    def as_json(self) -> dict[str, Any]:
        steady = self.steady_per_sec
        per = lambda seconds: round(seconds / self.intents * 1000, 3)  # noqa: E731
        return {
            "code": self.scenario.code,
            "round": self.round_no,
            "processes": self.scenario.processes,
            "webhook_delay_ms": self.scenario.webhook_delay_ms,
            "webhook_processes": self.webhook_processes,
            "intents": self.intents,
            "seconds": round(self.seconds, 2),
            "intents_per_sec": round(self.per_sec),
            "steady_intents_per_sec": round(steady) if steady else None,
            "intents_per_sec_per_process": round(
                (steady or self.per_sec) / self.scenario.processes
            ),
            "webhook_ceiling_per_sec": round(self.webhook_ceiling_per_sec),
            "db2_ceiling_per_sec": round(self.db2_ceiling_per_sec),
            "ratio_to_webhook_ceiling": round(
                (steady or self.per_sec) / self.webhook_ceiling_per_sec, 2
            )
            if self.webhook_ceiling_per_sec
            else None,
            "ratio_to_db2_ceiling": round((steady or self.per_sec) / self.db2_ceiling_per_sec, 2)
            if self.db2_ceiling_per_sec
            else None,
            "machine_cpu_busy": round(self.machine_busy, 3),
            "cpu_ms_per_intent_whole_run": round(self.cpu.busy / self.intents * 1000, 3),
            "cpu_ms_per_intent": round(self.cpu_ms_per_intent, 3),
            "worker_cpu_ms_per_intent": round(self.worker_cpu_ms_per_intent, 3),
            # Ours alone (workers, webhook, each cluster): what others
            # running on a shared machine do not inflate.
            "cpu_ms_per_intent_by_part": self.steady.part_ms_per_intent
            if self.steady
            else {
                **{k: per(v) for k, v in self.whole_run_parts.items()},
                "ours": per(sum(self.whole_run_parts.values())),
            },
            "machine_ceiling_per_sec": round(self.machine_ceiling_per_sec),
            "limit": self.limit(),
            "phases": self.phases,
            "wait_events": self.waits,
        }


def phase_report(directory: Path, concurrency: int) -> dict[str, Any]:
    """The workers' phase totals, added up: per batch, and as shares of the slots' time."""
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    wall = cpu_s = 0.0
    workers = 0
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        workers += 1
        wall += document["wall_s"]
        cpu_s += document["cpu_s"]
        for name, totals in document["phases"].items():
            seconds[name] = seconds.get(name, 0.0) + totals["seconds"]
            counts[name] = counts.get(name, 0) + totals["count"]
    batches = counts.get("read", 0)
    slot_s = wall * concurrency
    busy = sum(seconds.get(name, 0.0) for name in SLOT_PHASES)
    return {
        "workers": workers,
        "batches": batches,
        # Each worker is one event loop: its CPU over its wall time is how
        # busy that loop was (near 1: the loop itself is the bottleneck).
        "worker_loop_busy": round(cpu_s / wall, 3) if wall else None,
        "worker_cpu_s": round(cpu_s, 3),
        "ms_per_batch": {
            name: round(s / batches * 1000, 2) if batches else None
            for name, s in sorted(seconds.items())
        },
        # How often each phase ran per batch: db1_mark above 1 is the webhook's
        # answers recorded in several writes as they arrived.
        "times_per_batch": {
            name: round(n / batches, 2) if batches else None for name, n in sorted(counts.items())
        },
        "share_of_slot_time": {
            **{name: round(seconds.get(name, 0.0) / slot_s, 3) for name in SLOT_PHASES},
            "idle": round(max(0.0, slot_s - busy) / slot_s, 3),
        }
        if slot_s
        else {},
    }


def _committed(conn: psycopg.Connection) -> int:
    """How far the drain is, polled often: cheap (running totals), unlike counting the archive."""
    row = conn.execute(queries("bench_drain")["committed_so_far"], {"pool_id": POOL}).fetchone()
    return int(row[0]) if row else 0


def _bare_progress(path: Path) -> int:
    """Intents the bare drain has archived, from the file it rewrites after each batch."""
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _seed_claims(dsn: str, intents: int) -> None:
    """`intents` buyers claim once each, a thousand per statement (the batched claim)."""
    step = claims.MAX_BATCH
    with open_sync(dsn) as conn:
        for first in range(0, intents, step):
            users = [f"buyer-{n}" for n in range(first, min(intents, first + step))]
            claims.claim_batch(conn, POOL, users)


@dataclass(frozen=True)
class Plan:
    intents: int
    concurrency: int
    batch_size: int
    webhook_processes: int
    ceiling_seconds: float
    ceiling_clients: int


def run_scenario(
    workdir: Path, clusters: dict[str, Cluster], scenario: Scenario, plan: Plan, round_no: int = 1
) -> DrainResult:
    variant = "_bare" if scenario.bare else "_b" if scenario.baseline else ""
    tag = f"p{scenario.processes}_d{scenario.webhook_delay_ms}{variant}_r{round_no}"
    intents, concurrency, batch_size = plan.intents, plan.concurrency, plan.batch_size
    db1_name, db2_name = f"bench_db1_{tag}", f"bench_db2_{tag}"
    db1 = events.fresh_database(clusters["db1"], db1_name)
    db2 = events.fresh_database(clusters["db2"], db2_name)
    ceiling_db2 = events.fresh_database(clusters["db2"], f"bench_db2_ceiling_{tag}")
    with open_sync(ceiling_db2, autocommit=False) as conn:
        ledger.install_example(conn)
        conn.commit()
    slots = scenario.processes * concurrency
    with WebhookFleet(plan.webhook_processes, scenario.webhook_delay_ms) as webhook:
        pool = {
            "inventory": intents,
            "batch_size": batch_size,
            "validation_webhook_url": webhook.url,
        }
        path = events.write_config(workdir / f"{tag}.yaml", db1, db2, pool)
        settings = config.load(path)
        lifecycle.up(settings)
        _seed_claims(db1, intents)
        hook_ceiling = webhook_ceiling(
            webhook.url, min(slots * batch_size, 1024), plan.ceiling_clients, plan.ceiling_seconds
        )
        ledger_ceiling = db2_ceiling(
            ceiling_db2, slots, batch_size, plan.ceiling_clients, plan.ceiling_seconds
        )
        phase_dir = workdir / f"phases-{tag}"
        phase_dir.mkdir()
        phase_dir.chmod(0o777)
        progress_file = workdir / f"progress-{tag}"
        if scenario.bare:
            bare_drain.prepare_db2(db2)
            argv = [
                sys.executable, "-m", "intake_cli.tools.bench.bare_drain", db1, db2,
                webhook.url, settings.queue_name, str(batch_size), str(concurrency),
                str(progress_file),
            ]  # fmt: skip
        else:
            argv = [
                sys.executable, "-m", "intake_cli", "-c", str(path), "drain",
                "--log-level", "error", "--concurrency", str(concurrency),
            ]  # fmt: skip
        env = {**os.environ, phases.ENV: str(phase_dir)}
        if scenario.baseline is not None:
            env["PYTHONPATH"] = str(scenario.baseline / "src")
        sampler = WaitSampler(
            {"db1": (clusters["db1"].dsn, [db1_name]), "db2": (clusters["db2"].dsn, [db2_name])}
        )
        started = time.perf_counter()
        cpu_before = cpu.cpu_times()
        workers = [
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            for _ in range(scenario.processes)
        ]

        def parts() -> dict[str, float]:
            table = cpu.processes()
            return {
                "workers": sum(cpu.process_cpu_s(w.pid) for w in workers),
                "webhook": sum(cpu.process_cpu_s(pid) for pid in webhook.pids),
                "db1": cpu.cluster_cpu_s(clusters["db1"].datadir, table),
                "db2": cpu.cluster_cpu_s(clusters["db2"].datadir, table),
            }

        timeline: list[Tick] = []
        parts_before = parts()
        try:
            with sampler, open_sync(db1) as progress:

                def how_far() -> int:
                    return _bare_progress(progress_file) if scenario.bare else _committed(progress)

                while True:
                    done = how_far()
                    timeline.append(
                        Tick(time.perf_counter() - started, done, cpu.cpu_times(), parts())
                    )
                    if done >= intents:
                        break
                    # The bare drain exits once the queue is empty: look again first.
                    if any(w.poll() is not None for w in workers) and how_far() < intents:
                        raise RuntimeError("a drain worker exited early")
                    time.sleep(0.1)
            seconds = time.perf_counter() - started
            cpu_after = cpu.cpu_times()
            parts_after = parts()
            archived = events.archived_count(db1)
            if archived != intents:
                raise RuntimeError(f"{intents} intents committed but {archived} archived")
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
    report = phase_report(phase_dir, concurrency)
    return DrainResult(
        scenario,
        intents,
        seconds,
        cpu_after - cpu_before,
        steady=steady_state(timeline, intents),
        webhook_ceiling_per_sec=hook_ceiling,
        db2_ceiling_per_sec=ledger_ceiling,
        whole_run_parts={k: parts_after[k] - parts_before[k] for k in parts_after},
        phases=report,
        waits=sampler.report(),
        webhook_processes=plan.webhook_processes,
        round_no=round_no,
    )


def markdown(results: list[DrainResult]) -> str:
    lines = [
        "| code | drain processes | webhook delay | intents | seconds | intents/s | steady/s "
        "| per process | webhook ceiling/s | DB2 ceiling/s | machine CPU busy | CPU ms/intent "
        "| drain CPU ms/intent | machine ceiling/s | limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rounds = max(r.round_no for r in results) if results else 1
    for r in results:
        d = r.as_json()
        steady = f"{d['steady_intents_per_sec']:,}" if d["steady_intents_per_sec"] else "—"
        code = f"{d['code']}, round {d['round']}" if rounds > 1 else d["code"]
        lines.append(
            f"| {code} | {d['processes']} | {d['webhook_delay_ms']} ms | {d['intents']:,} | "
            f"{d['seconds']} | {d['intents_per_sec']:,} | {steady} | "
            f"{d['intents_per_sec_per_process']:,} | "
            f"{d['webhook_ceiling_per_sec']:,} | {d['db2_ceiling_per_sec']:,} | "
            f"{d['machine_cpu_busy']:.0%} | {d['cpu_ms_per_intent']} | "
            f"{d['worker_cpu_ms_per_intent']} | {d['machine_ceiling_per_sec']:,} | {d['limit']} |"
        )
    lines.append("")
    for r in results:
        d = r.as_json()
        head = f"{d['processes']} process(es), webhook {d['webhook_delay_ms']} ms, {d['code']}"
        shares = d["phases"].get("share_of_slot_time", {})
        lines.append(
            f"- {head}: slot time "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + f"; ms/batch {d['phases'].get('ms_per_batch')}"
            + f"; worker loop busy {d['phases'].get('worker_loop_busy')}"
            + f"; CPU ms/intent {d['cpu_ms_per_intent_by_part']}"
        )
        for cluster in ("db1", "db2"):
            waits = d["wait_events"].get(cluster, {})
            top = ", ".join(f"{w['event']} {w['share']:.0%}" for w in waits.get("top", []))
            lines.append(
                f"  - {cluster} waits (busy backends avg {waits.get('busy_backends_avg')}): {top}"
            )
    return "\n".join(lines)


def targets(results: list[DrainResult]) -> list[Target]:
    """The issue's bars that one run can judge: scale-out against one process."""
    found = []
    bare = {r.scenario.webhook_delay_ms: r for r in results if r.scenario.bare}
    results = [r for r in results if r.scenario.baseline is None and not r.scenario.bare]
    one = {r.scenario.webhook_delay_ms: r for r in results if r.scenario.processes == 1}
    for r in results:
        base = one.get(r.scenario.webhook_delay_ms)
        bar = {2: 1.6, 8: 5.0}.get(r.scenario.processes)
        if base is None or bar is None:
            continue
        ratio = (r.steady_per_sec or r.per_sec) / (base.steady_per_sec or base.per_sec)
        found.append(
            Target.at_least(
                f"{r.scenario.processes} processes >= {bar}x one "
                f"(webhook delay {r.scenario.webhook_delay_ms} ms, steady state)",
                ratio,
                bar,
                f"{ratio:.2f}x",
                limit=r.limit(),
                one_process_machine_cpu_busy=round(base.machine_busy, 3),
                machine_ceiling_per_sec=round(base.machine_ceiling_per_sec),
            )
        )
    for delay, reference in sorted(bare.items()):
        base = one.get(delay)
        if base is None:
            continue
        bare_rate = reference.steady_per_sec or reference.per_sec
        ratio = (base.steady_per_sec or base.per_sec) / bare_rate
        # Each drain process's own CPU per intent: where both are CPU-bound,
        # the bare drain's over ours is the rate ratio to expect, and it holds
        # on a machine others share, where the rates swing.
        ours, theirs = base.worker_cpu_ms_per_intent, reference.worker_cpu_ms_per_intent
        cpu_ratio = theirs / ours if ours else None
        found.append(
            Target.at_least(
                f"one process >= 80% of a bare Python drain (webhook delay {delay} ms, "
                "steady state)",
                ratio,
                0.8,
                f"{ratio:.2f}x" + (f" (CPU per intent {cpu_ratio:.2f}x)" if cpu_ratio else ""),
                bare_per_sec=round(bare_rate),
                worker_cpu_ms_per_intent=round(ours, 3),
                bare_worker_cpu_ms_per_intent=round(theirs, 3),
                cpu_ratio=round(cpu_ratio, 2) if cpu_ratio else None,
            )
        )
    for r in results:
        if r.scenario.processes == 1 and r.scenario.webhook_delay_ms == 0:
            found.append(
                Target.at_most(
                    "machine-wide CPU per intent <= 0.25 ms (one process, webhook at once)",
                    r.cpu_ms_per_intent,
                    0.25,
                    f"{r.cpu_ms_per_intent:.3f} ms",
                )
            )
    return found


def sized(intents: int, processes: int, concurrency: int, batch_size: int, per_slot: int) -> int:
    """At least `intents`, and enough that every slot of the fleet reads `per_slot` batches."""
    return max(intents, processes * concurrency * batch_size * per_slot)


def drain_command(
    intents: int = typer.Option(
        20_000,
        "--intents",
        min=100,
        help="Intents per scenario (at least; see --batches-per-slot).",
    ),
    processes: str = typer.Option("1,2", "--processes", help="Drain processes, comma list."),
    webhook_delay_ms: str = typer.Option(
        "0,50", "--webhook-delay-ms", help="Webhook answer delays to measure, comma list."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Batches in flight."),
    output: Path | None = output_option(),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=10_000),
    batches_per_slot: int = typer.Option(
        10,
        "--batches-per-slot",
        min=1,
        help="Seed enough intents that every slot of the largest fleet reads this many batches.",
    ),
    webhook_processes: int = typer.Option(
        0,
        "--webhook-processes",
        min=0,
        help="Test webhook processes on one port (SO_REUSEPORT); 0: one per 4 cores.",
    ),
    ceiling_seconds: float = typer.Option(
        3.0, "--ceiling-seconds", min=0.5, help="How long each ceiling is measured."
    ),
    ceiling_clients: int = typer.Option(
        0, "--ceiling-clients", min=0, help="Load generator processes per ceiling; 0: from cores."
    ),
    baseline_src: Path | None = typer.Option(
        None,
        "--baseline-src",
        help="Also run every scenario with the `intake drain` of this source tree (its src/ "
        "and sql/, e.g. from `git archive`), before this tree's: a before/after in one run.",
    ),
    bare: bool = typer.Option(
        True,
        "--bare/--no-bare",
        help="Also run the bare Python drain (read, POST each, one DB2 insert, archive: "
        "tools/bench/bare_drain.py) as one process at each webhook delay, the reference "
        "for one `intake drain` process.",
    ),
    rounds: int = typer.Option(
        1,
        "--rounds",
        min=1,
        max=9,
        help="Run the scenarios this many times, in turn first to last and last to first, "
        "and judge each bar on the median round: one round's ratios move with the "
        "machine's speed from one minute to the next.",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A smoke run: 1,000 intents, 1 process, and the bare drain."
    ),
    as_json: bool = json_option("a table"),
) -> None:
    """Drain throughput per process, where its time goes, and the webhook's and DB2's ceilings."""
    cores = os.cpu_count() or 1
    scenarios = [
        Scenario(p, d)
        for d in webhook_delays_ms(webhook_delay_ms)
        for p in parse_numbers("--processes", processes, 1, MAX_PROCESSES)
    ]
    if baseline_src is not None:
        if not (baseline_src / "src" / "intake_cli").is_dir():
            raise typer.BadParameter(
                f"{baseline_src} has no src/intake_cli", param_hint="--baseline-src"
            )
        baseline = baseline_src.resolve()
        scenarios = [
            x for s in scenarios for x in (Scenario(s.processes, s.webhook_delay_ms, baseline), s)
        ]
    if bare:
        delays = sorted({s.webhook_delay_ms for s in scenarios})
        scenarios = [Scenario(1, d, bare=True) for d in delays] + scenarios
    largest = max(s.processes for s in scenarios)
    plan = Plan(
        intents=sized(intents, largest, concurrency, batch_size, batches_per_slot),
        concurrency=concurrency,
        batch_size=batch_size,
        webhook_processes=webhook_processes or default_processes(cores),
        ceiling_seconds=ceiling_seconds,
        ceiling_clients=ceiling_clients or max(2, cores // 2),
    )
    if quick:
        scenarios = [Scenario(1, 0, bare=True), Scenario(1, 0)] if bare else [Scenario(1, 0)]
        # One load process per ceiling: each is a spawned interpreter.
        plan = Plan(1000, concurrency, batch_size, plan.webhook_processes, 0.5, 1)
    with (
        events.workdir("drain") as workdir,
        events.durable_clusters(workdir) as (_, running),
    ):
        by_round = [
            [
                run_scenario(workdir, running, s, plan, n)
                for s in (scenarios if n % 2 else scenarios[::-1])
            ]
            for n in range(1, rounds + 1)
        ]
    results = [r for one_round in by_round for r in one_round]
    found = targets_json(median_of_rounds([targets(one_round) for one_round in by_round]))
    report = {
        "machine": machine(synchronous_commit="on"),
        "settings": {
            "concurrency": concurrency,
            "batch_size": batch_size,
            "intents": plan.intents,
            "batches_per_slot": batches_per_slot,
            "webhook_processes": plan.webhook_processes,
            "ceiling_clients": plan.ceiling_clients,
            "ceiling_seconds": plan.ceiling_seconds,
            "steady_state": list(STEADY),
            "rounds": rounds,
        },
        "results": [r.as_json() for r in results],
        "targets": found,
    }
    publish(
        report,
        "drain",
        output,
        as_json,
        lambda: markdown(results) + "\n\n" + targets_markdown(found),
    )
