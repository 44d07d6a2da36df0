"""`intake bench metrics`: what one metrics collection costs at a large inventory.

A durable throwaway DB1 gets a pool of `--units` units, then the collector
(`intake.collect_metrics()`, what pg_cron runs every 5 s) is timed in three
states: just seeded; with `--claims` intents waiting in the queue; and with
a tenth of those intents handed back to the release list. The baseline from
the same run is the one-shot COUNT over the inventory that the collector
replaces.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
import typer

from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.options import json_option, output_option
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    percentile,
    publish,
    targets_json,
    targets_markdown,
)

TARGET_MS = 50.0
# Claims per transaction: each holds an advisory lock until its commit.
CLAIM_CHUNK = 1_000


def _q(name: str) -> str:
    return queries("bench_metrics")[name]


def _timed_ms(conn: psycopg.Connection, query: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(percentile(ordered, 0.95), 2),
        "max_ms": round(ordered[-1], 2),
    }


def measure(units: int, claims: int, runs: int, workdir: Path) -> dict[str, Any]:
    with events.throwaway_event(workdir, events.POOL, units) as (_, dsn):
        states: list[dict[str, Any]] = []
        with open_sync(dsn) as conn:
            conn.execute("analyze")

            def state(name: str) -> None:
                collect = _timed_ms(conn, _q("collect"), runs)
                count = _timed_ms(conn, _q("count_inventory"), max(3, runs // 4))
                depth = conn.execute(_q("queue_depth")).fetchone()[0]  # type: ignore[index]
                states.append(
                    {
                        "state": name,
                        "queue_depth": int(depth),
                        "collect": _summary(collect),
                        "count_inventory_baseline": _summary(count),
                    }
                )

            state("seeded")
            for lo in range(1, claims + 1, CLAIM_CHUNK):
                hi = min(lo + CLAIM_CHUNK - 1, claims)
                conn.execute(_q("claim_many"), {"pool_id": events.POOL, "lo": lo, "hi": hi})
            state(f"{claims:,} intents queued")
            conn.execute(_q("release_some"), {"pool_id": events.POOL, "count": claims // 10})
            state(f"{claims // 10:,} units released")
        worst = max(s["collect"]["p95_ms"] for s in states)
        return {
            "machine": machine(),
            "units": units,
            "claims": claims,
            "runs_per_state": runs,
            "synchronous_commit": "on",
            "states": states,
            "targets": targets_json(
                [
                    Target.at_most(
                        f"collection p95 < {TARGET_MS:.0f} ms at {units:,} units",
                        worst,
                        TARGET_MS,
                        f"worst p95 {worst} ms",
                        below=True,
                    )
                ]
            ),
        }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"metrics collection at {report['units']:,} units ({report['runs_per_state']} runs "
        "per state; baseline: COUNT(*) by status over the inventory)",
        "",
        "| state | queue depth | collect median | collect p95 | COUNT baseline median | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in report["states"]:
        collect, count = s["collect"], s["count_inventory_baseline"]
        ratio = count["median_ms"] / collect["median_ms"] if collect["median_ms"] else 0
        lines.append(
            f"| {s['state']} | {s['queue_depth']:,} | {collect['median_ms']} ms "
            f"| {collect['p95_ms']} ms | {count['median_ms']} ms | {ratio:.0f}x faster |"
        )
    lines += ["", targets_markdown(report["targets"])]
    return "\n".join(lines)


def metrics_command(
    units: int = typer.Option(1_000_000, "--units", min=1, help="Inventory of the pool."),
    claims: int = typer.Option(
        100_000, "--claims", min=10, help="Intents queued for the second state."
    ),
    runs: int = typer.Option(20, "--runs", min=1, help="Collections timed per state."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: 20,000 units, 1,000 claims."),
    as_json: bool = json_option(),
    output: Path | None = output_option(),
) -> None:
    """Time one metrics collection (what pg_cron runs every 5 s) at a large inventory.

    Runs on its own durable embedded clusters in a temp dir; the baseline is
    the COUNT over the inventory that the collector avoids, timed in the same run.
    """
    if quick:
        units, claims, runs = 20_000, 1_000, 5
    with events.workdir("metrics") as workdir:
        report = measure(units, min(claims, units), runs, workdir)
    publish(report, "metrics", output, as_json, lambda: markdown(report))
