"""`intake bench seeding`: how fast `intake up` fills a pool with units.

Times `pools.seed`, the path `intake up` runs (committed chunks of
server-side inserts into the UNLOGGED inventory with its two indexes, then
ANALYZE), for a million units on a throwaway durable cluster. The floor,
measured in the same run on the same cluster, is the same rows in one
statement into an UNLOGGED table with no index.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import typer

from intake_cli.engine import pools
from intake_cli.platform.config import EmbeddedSettings, PoolSettings
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.options import json_option, output_option
from intake_cli.tools.bench.common.pgbench import bench_db1, script
from intake_cli.tools.bench.common.results import publish, say

POOL_ID = "seeding"
DEFAULT_UNITS = 1_000_000
QUICK_UNITS = 100_000


@dataclass
class SeedRun:
    units: int
    seconds: float
    # Units/s within each committed chunk of pools.SEED_CHUNK units: a seed
    # that slows as the inventory grows shows it here.
    chunks_per_s: list[int]
    floor_seconds: float

    @property
    def per_s(self) -> float:
        return self.units / self.seconds

    @property
    def floor_per_s(self) -> float:
        return self.units / self.floor_seconds

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "units_per_s": round(self.per_s),
            "floor_units_per_s": round(self.floor_per_s),
            "vs_floor": round(self.per_s / self.floor_per_s, 3),
        }


def _seed_once(conn: psycopg.Connection, pool: PoolSettings) -> SeedRun:
    conn.execute(script("seed_reset.sql"))
    # Each timing starts with no dirty buffers of the previous one to write.
    conn.execute("checkpoint")
    marks = [(0, time.perf_counter())]
    result = pools.seed(conn, pool, lambda done, _: marks.append((done, time.perf_counter())))
    chunks = [round((n2 - n1) / (t2 - t1)) for (n1, t1), (n2, t2) in itertools.pairwise(marks)]
    conn.execute("checkpoint")
    started = time.perf_counter()
    conn.execute(script("seed_floor.sql"), {"pool_id": POOL_ID, "units": pool.inventory})
    floor = time.perf_counter() - started
    return SeedRun(result.added, round(result.seconds, 3), chunks, round(floor, 3))


def measure(units: int, repeat: int, workdir: Path) -> dict[str, Any]:
    settings = EmbeddedSettings(max_connections=20, synchronous_commit=True)
    with bench_db1(workdir, settings) as db1:
        conn = db1.conn
        # The webhook is never called: only the seed is measured.
        pool = PoolSettings(POOL_ID, units, events.NO_WEBHOOK)
        with conn.transaction():
            pools.reconcile(conn, (pool,))
        runs = []
        for n in range(1, repeat + 1):
            say(f"[{n}/{repeat}] seeding {units:,} units, then the floor")
            run = _seed_once(conn, pool)
            say(
                f"    {run.seconds:.2f} s = {run.per_s:,.0f} units/s; "
                f"floor {run.floor_seconds:.2f} s = {run.floor_per_s:,.0f} units/s"
            )
            runs.append(run)
        machine = db1.machine()
    rates = [r.per_s for r in runs]
    return {
        "machine": machine,
        "settings": {
            "units": units,
            "repeat": repeat,
            "chunk": pools.SEED_CHUNK,
            "synchronous_commit": settings.synchronous_commit,
            "shared_buffers": settings.shared_buffers,
        },
        "runs": [r.as_json() for r in runs],
        "median_units_per_s": round(statistics.median(rates)),
        "median_floor_units_per_s": round(statistics.median(r.floor_per_s for r in runs)),
        # No bar: the seed is reported against its floor, not judged.
        "targets": [],
    }


def markdown(document: dict[str, Any]) -> str:
    m, s = document["machine"], document["settings"]
    sync = "on" if s["synchronous_commit"] else "off"
    lines = [
        f"{m['cores']} cores, PostgreSQL {m['postgresql']}, synchronous_commit = {sync}, "
        f"{s['units']:,} units in chunks of {s['chunk']:,}",
        "",
        "| run | seconds | units/s | floor s | floor units/s | of floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, run in enumerate(document["runs"], start=1):
        lines.append(
            f"| {n} | {run['seconds']:.2f} | {run['units_per_s']:,} | "
            f"{run['floor_seconds']:.2f} | {run['floor_units_per_s']:,} | {run['vs_floor']:.0%} |"
        )
    lines += [
        "",
        f"Median: {document['median_units_per_s']:,} units/s "
        f"(floor {document['median_floor_units_per_s']:,} units/s). Floor: the same rows in "
        "one INSERT into an UNLOGGED table with no index.",
    ]
    return "\n".join(lines)


def seeding_command(
    units: int = typer.Option(
        DEFAULT_UNITS, "--units", min=1000, max=100_000_000, help="Units to seed per run."
    ),
    repeat: int = typer.Option(3, "--repeat", min=1, max=20, help="Runs; the median is kept."),
    quick: bool = typer.Option(
        False, "--quick", help=f"Smoke test: {QUICK_UNITS:,} units, one run."
    ),
    as_json: bool = json_option(),
    output: Path | None = output_option(),
) -> None:
    """Time to seed a pool (1,000,000 units) the way `intake up` does, against a bare insert.

    Starts its own durable DB1 cluster in a temp dir, so it never touches an
    event's clusters.
    """
    if quick:
        units, repeat = QUICK_UNITS, 1
    with events.workdir("seeding") as workdir:
        document = measure(units, repeat, workdir)
    publish(document, "seeding", output, as_json, lambda: markdown(document))
