"""`intake bench recovery`: how long DB1 takes to find and rebuild a pool after a crash.

A durable throwaway DB1 (default embedded settings, synchronous_commit on)
gets a pool of `--units` units, and the drain's own functions give it every
kind of durable fact a rebuild reads: `--in-flight` intents waiting in the
queue (a tenth of them validated by the webhook, a hundredth dead-lettered,
half of those replayed, so the DLQ and its archive hold some) and
`--archived` intents in the archive, a tenth of them rejected (their units
back on sale) and the rest committed. Then, per run, the server crashes for
real (`pg_ctl stop -m immediate`, which empties every unlogged table and
resets the unit sequence) and starts again, and two things are timed from
the moment it accepts connections: **detect**, a new connection and
`recovery.lost_pools` naming the pool; **rebuild**, `recovery.rebuild`
(`intake.rebuild_inventory` in one transaction, then its ANALYZE). Each run
then checks the rebuilt inventory against the one the crash destroyed (a
fingerprint over every unit's id, status, holder and key, the release list
and the unit sequence) and its counts against the shape; a wrong rebuild
fails the command.

The baseline, timed in the same run on the same server, is a bare pass over
the same data with none of the rebuild's logic: every message of the queue,
the archive, the DLQ and its archive read once with the same jsonb field
extraction (no dedup, no validation, no join), `intake.intent_state` read
once, and the pool's `--units` rows, of the inventory's width and with the
same ids (md5 of the pool's namespace and the unit number, computed inline),
written once into an unlogged scratch table without indexes. That is the
least any rebuild from these facts must read and write; the ratio says what
the rebuild adds: validating and deduplicating the intents, the join with
their states, the per-unit call of `intake.derived_resource_id`, the
inventory's indexes, the release list and the ANALYZE. The baseline runs
after a clean restart, so that it too starts with cold shared buffers (the
OS cache is warm for both: a crash of the server keeps it).

pg_cron's intake jobs are unscheduled for the benchmark: the maintenance job
would otherwise rebuild the pool on its own at the next minute, in the
middle of a timed run. Server start-up (crash recovery) is reported but not
part of the target, which covers what intake does: detect and rebuild.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import typer
from psycopg.rows import dict_row

from intake_cli.engine import recovery, telemetry
from intake_cli.platform.embedded import (
    EmbeddedClusters,
    _as,
    _server_account,
    pg_bindir,
)
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.events import POOL
from intake_cli.tools.bench.common.options import json_option, output_option
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    publish,
    targets_json,
    targets_markdown,
)

TRIGGER = "bench"
TARGET_S = 10.0
# claim_resources takes at most 1,000 users per call.
CLAIM_CHUNK = 1_000
# Intents per drain step (archive, reject): a large drain batch.
FINISH_CHUNK = 5_000


def _q(name: str) -> str:
    return queries("bench_recovery")[name]


@dataclass(frozen=True)
class Shape:
    """The pool's state before the crash, and what the rebuild must give back."""

    units: int
    in_flight: int
    archived: int

    @property
    def rejected(self) -> int:
        return self.archived // 10

    @property
    def committed(self) -> int:
        return self.archived - self.rejected

    @property
    def validated(self) -> int:
        return self.in_flight // 10

    @property
    def dead(self) -> int:
        return self.in_flight // 100

    @property
    def replayed(self) -> int:
        return self.dead // 2

    def expected_counts(self) -> dict[str, int]:
        return {
            "available": self.units - self.in_flight - self.committed,
            "locked": self.in_flight,
            "consumed": self.committed,
            "released": self.rejected,
        }

    def expected_rebuild(self) -> dict[str, int]:
        claimed = self.in_flight + self.archived
        return {
            "units": self.units,
            "locked": self.in_flight,
            "consumed": self.committed,
            "released": self.rejected,
            "high_water": claimed,
            "intents": claimed,
            "conflicts": 0,
        }


def _connect(dsn: str) -> psycopg.Connection:
    return open_sync(dsn)


def _one(conn: psycopg.Connection, name: str, **params: Any) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_q(name), params).fetchone()
    assert row is not None
    return row


def _in_chunks(conn: psycopg.Connection, name: str, total: int, chunk: int) -> None:
    done = 0
    while done < total:
        count = min(chunk, total - done)
        conn.execute(_q(name), {"count": count})
        done += count


def _build_state(conn: psycopg.Connection, shape: Shape) -> None:
    """Claims, then the drain's steps, as the engine itself writes them."""
    claims = shape.in_flight + shape.archived
    for lo in range(1, claims + 1, CLAIM_CHUNK):
        hi = min(lo + CLAIM_CHUNK - 1, claims)
        got = conn.execute(_q("claim_many"), {"pool_id": POOL, "lo": lo, "hi": hi}).fetchone()
        if got is None or got[0] != hi - lo + 1:
            raise RuntimeError(f"claims {lo}..{hi}: only {got} claimed")
    # The oldest intents are archived: rejected first, then committed.
    _in_chunks(conn, "finish_rejected", shape.rejected, FINISH_CHUNK)
    _in_chunks(conn, "finish_committed", shape.committed, FINISH_CHUNK)
    if shape.validated:
        conn.execute(_q("mark_validated"), {"count": shape.validated})
    if shape.dead:
        conn.execute(_q("dead_letter"), {"count": shape.dead})
    if shape.replayed:
        conn.execute(_q("replay_dead"), {"count": shape.replayed})
    conn.execute("vacuum analyze")


def _crash(clusters: EmbeddedClusters) -> float:
    """Crash DB1 as a killed server would, start it again; seconds until it accepts connections."""
    cluster = clusters.load()["db1"]
    subprocess.run(
        [str(pg_bindir() / "pg_ctl"), "stop", "-m", "immediate", "-D", cluster.datadir],
        check=True,
        capture_output=True,
        cwd="/",
        **_as(_server_account()),
    )
    started = time.perf_counter()
    deadline = time.monotonic() + 60
    while True:
        try:
            clusters.ensure(("db1",))
            return time.perf_counter() - started
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _restart(clusters: EmbeddedClusters) -> None:
    """A clean restart: cold shared buffers, nothing lost."""
    clusters.halt(("db1",))
    clusters.ensure(("db1",))


def _baseline(dsn: str, units: int) -> float:
    with _connect(dsn) as conn:
        conn.execute(_q("baseline_drop"))
        conn.execute(_q("baseline_scratch"))
        started = time.perf_counter()
        conn.execute(_q("baseline_scan_messages"), {"pool_id": POOL}).fetchall()
        conn.execute(_q("baseline_scan_state")).fetchall()
        conn.execute(_q("baseline_write"), {"pool_id": POOL, "units": units})
        elapsed = time.perf_counter() - started
        conn.execute(_q("baseline_drop"))
    return elapsed


def _check_counts(conn: psycopg.Connection, shape: Shape, what: str, problems: list[str]) -> None:
    counts = _one(conn, "status_counts", pool_id=POOL)
    for key, want in shape.expected_counts().items():
        if counts[key] != want:
            problems.append(f"{what}: {key} {counts[key]:,}, expected {want:,}")


def _one_run(
    clusters: EmbeddedClusters, dsn: str, shape: Shape, before: dict[str, Any]
) -> dict[str, Any]:
    problems: list[str] = []
    _restart(clusters)
    baseline = _baseline(dsn, shape.units)

    restart = _crash(clusters)
    started = time.perf_counter()
    with _connect(dsn) as conn:
        lost = recovery.lost_pools(conn)
        detected = time.perf_counter()
        built = recovery.rebuild(conn, POOL, TRIGGER)
        rebuilt = time.perf_counter()

        if lost != [POOL]:
            problems.append(f"after the crash, lost_pools said {lost}, expected [{POOL!r}]")
        if built is None:
            problems.append("rebuild did nothing: the inventory was whole after the crash")
        else:
            for key, want in shape.expected_rebuild().items():
                got = getattr(built, key)
                if got != want:
                    problems.append(f"rebuild reported {key} {got:,}, expected {want:,}")
        _check_counts(conn, shape, "rebuilt inventory", problems)
        after = _one(conn, "fingerprint", pool_id=POOL)
        for key, value in before.items():
            if after[key] != value:
                fingerprints = f"{after[key]} after, {value} before"
                problems.append(f"rebuilt {key} differ from those the crash lost: {fingerprints}")
        still = recovery.lost_pools(conn)
        if still:
            problems.append(f"after the rebuild, lost_pools still says {still}")
    detect_s = detected - started
    rebuild_s = rebuilt - detected
    return {
        "restart_s": round(restart, 3),
        "detect_s": round(detect_s, 3),
        "rebuild_s": round(rebuild_s, 3),
        "rebuild_sql_s": round(built.seconds, 3) if built else None,
        "total_s": round(detect_s + rebuild_s, 3),
        "baseline_s": round(baseline, 3),
        "verified": not problems,
        "problems": problems,
    }


def measure(units: int, in_flight: int, archived: int, runs: int, workdir: Path) -> dict[str, Any]:
    shape = Shape(units, in_flight, archived)
    with events.throwaway_event(workdir, POOL, units) as (clusters, dsn):
        with _connect(dsn) as conn:
            telemetry.unschedule(conn)
            building = time.perf_counter()
            _build_state(conn, shape)
            build_s = time.perf_counter() - building
            facts = _one(conn, "facts")
            setup_problems: list[str] = []
            _check_counts(conn, shape, "state before the crash", setup_problems)
            before = _one(conn, "fingerprint", pool_id=POOL)
        if setup_problems:
            raise RuntimeError("the benchmark built the wrong state: " + "; ".join(setup_problems))
        results = [_one_run(clusters, dsn, shape, before) for _ in range(runs)]

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 3)

    medians = {
        key: median(key) for key in ("restart_s", "detect_s", "rebuild_s", "total_s", "baseline_s")
    }
    problems = [f"run {n}: {p}" for n, r in enumerate(results, 1) for p in r["problems"]]
    verified = not problems
    return {
        "machine": machine(),
        "units": units,
        "in_flight": in_flight,
        "archived": archived,
        "rejected": shape.rejected,
        "validated": shape.validated,
        "dead_lettered": shape.dead,
        "replayed": shape.replayed,
        "facts": {k: int(v) for k, v in facts.items()},
        "runs": runs,
        "synchronous_commit": "on",
        "crash": "pg_ctl stop -m immediate, then start",
        "build_state_s": round(build_s, 2),
        "results": results,
        "median": medians,
        "ratio_to_baseline": (
            round(medians["total_s"] / medians["baseline_s"], 2) if medians["baseline_s"] else None
        ),
        "verified": verified,
        "problems": problems,
        "targets": targets_json(
            [
                Target.at_most(
                    f"detect + rebuild < {TARGET_S:.0f} s at {units:,} units",
                    medians["total_s"],
                    TARGET_S,
                    f"{medians['total_s']:.2f} s",
                    below=True,
                ).unless(verified, "rebuilt wrong")
            ]
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["median"]
    lines = [
        f"rebuild after a crash of {report['units']:,} units with {report['in_flight']:,} "
        f"intents in flight and {report['archived']:,} archived ({report['rejected']:,} of "
        f"them rejected); median of {report['runs']} runs, {report['machine']['cores']} cores",
        "",
        "| | median | runs |",
        "|---|---:|---|",
    ]
    rows = [
        ("server start-up after the crash (not in the target)", "restart_s"),
        ("detect (connect + lost_pools)", "detect_s"),
        ("rebuild (rebuild_inventory + ANALYZE)", "rebuild_s"),
        ("**detect + rebuild**", "total_s"),
        ("bare scan of the same data (baseline)", "baseline_s"),
    ]
    for label, key in rows:
        each = ", ".join(f"{r[key]:.2f}" for r in report["results"])
        lines.append(f"| {label} | {m[key]:.2f} s | {each} |")
    ratio = report["ratio_to_baseline"]
    lines += [
        f"| ratio to baseline | {ratio:.1f}x | |" if ratio else "| ratio to baseline | - | |",
        "",
    ]
    if report["verified"]:
        lines.append("rebuilt inventory: identical to the one the crash destroyed, every run")
    else:
        lines.append("**REBUILT WRONG**:")
        lines += [f"- {p}" for p in report["problems"]]
    lines += ["", targets_markdown(report["targets"])]
    return "\n".join(lines)


def recovery_command(
    units: int = typer.Option(1_000_000, "--units", min=1, help="Inventory of the pool."),
    in_flight: int = typer.Option(
        100_000, "--in-flight", min=0, help="Intents waiting in the queue at the crash."
    ),
    archived: int = typer.Option(
        100_000, "--archived", min=0, help="Intents already archived (a tenth rejected)."
    ),
    runs: int = typer.Option(3, "--runs", min=1, help="Crashes timed; the median is kept."),
    quick: bool = typer.Option(
        False, "--quick", help="Smoke test: 20,000 units, 2,000 in flight, 2,000 archived."
    ),
    as_json: bool = json_option(),
    output: Path | None = output_option(),
) -> None:
    """Time detecting and rebuilding a pool's inventory after a real DB1 crash.

    Runs on its own durable embedded clusters in a temp dir; the baseline is
    a bare pass over the same data (read the facts, write the rows), timed in
    the same run. Exits 1 if a rebuilt inventory differs from the lost one.
    """
    if quick:
        units, in_flight, archived, runs = 20_000, 2_000, 2_000, 2
    if in_flight + archived > units:
        raise typer.BadParameter(
            f"--in-flight + --archived ({in_flight + archived:,}) exceeds --units ({units:,})"
        )
    with events.workdir("recovery") as workdir:
        report = measure(units, in_flight, archived, runs, workdir)
    publish(report, "recovery", output, as_json, lambda: markdown(report))
    if not report["verified"]:
        typer.echo(
            "error: the rebuilt inventory is WRONG: " + "; ".join(report["problems"]), err=True
        )
        raise typer.Exit(1)
