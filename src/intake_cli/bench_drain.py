"""`intake bench drain`: intents/s end to end per `intake drain` process.

Each scenario gets fresh DB1 and DB2 databases on durable embedded clusters,
a seeded pool, N claims, the test webhook (answering at once or after a
delay) and 1 or more real `intake drain` processes; the clock runs from the
workers' start until every intent is archived. The baseline measured in the
same run is the webhook ceiling: the same number of POSTs from intake's
webhook client alone, with no database work.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import typer
import yaml

from intake_cli import claims, config, lifecycle
from intake_cli.embedded import DATABASE, SUPERUSER, Cluster, EmbeddedClusters
from intake_cli.webhook import WebhookClient
from intake_cli.webhook_process import WebhookServer

POOL = "bench"


@dataclass(frozen=True)
class Scenario:
    processes: int
    webhook_delay_ms: int


@dataclass(frozen=True)
class DrainResult:
    scenario: Scenario
    intents: int
    seconds: float
    ceiling_per_sec: float

    @property
    def per_sec(self) -> float:
        return self.intents / self.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "processes": self.scenario.processes,
            "webhook_delay_ms": self.scenario.webhook_delay_ms,
            "intents": self.intents,
            "seconds": round(self.seconds, 2),
            "intents_per_sec": round(self.per_sec),
            "intents_per_sec_per_process": round(self.per_sec / self.scenario.processes),
            "webhook_ceiling_per_sec": round(self.ceiling_per_sec),
            "ratio_to_webhook_ceiling": round(self.per_sec / self.ceiling_per_sec, 2),
        }


def _database(cluster: Cluster, name: str) -> str:
    with psycopg.connect(
        f"host=127.0.0.1 port={cluster.port} user={SUPERUSER} dbname={DATABASE}", autocommit=True
    ) as conn:
        conn.execute(
            psycopg.sql.SQL("drop database if exists {}").format(psycopg.sql.Identifier(name))
        )
        conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    return f"host=127.0.0.1 port={cluster.port} user={SUPERUSER} dbname={name}"


async def _webhook_ceiling(url: str, count: int, concurrency: int) -> float:
    """POSTs per second from the webhook client alone: what the drain cannot beat."""
    gate = asyncio.Semaphore(concurrency)
    async with WebhookClient(max_connections=concurrency) as client:

        async def one(n: int) -> None:
            async with gate:
                await client.validate(url, {"n": n}, f"ceiling-{n}")

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return count / (time.perf_counter() - started)


def _archived(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("select count(*) from pgmq.a_intents").fetchone()[0])  # type: ignore[index]


def run_scenario(
    workdir: Path,
    clusters: dict[str, Cluster],
    scenario: Scenario,
    intents: int,
    concurrency: int,
    batch_size: int,
) -> DrainResult:
    tag = f"p{scenario.processes}_d{scenario.webhook_delay_ms}"
    db1 = _database(clusters["db1"], f"bench_db1_{tag}")
    db2 = _database(clusters["db2"], f"bench_db2_{tag}")
    with WebhookServer(delay_ms=scenario.webhook_delay_ms) as webhook:
        path = workdir / f"{tag}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "db1": {"dsn": db1},
                    "db2": {"dsn": db2, "install_example_ledger": True},
                    "pools": [
                        {
                            "pool_id": POOL,
                            "inventory": intents,
                            "batch_size": batch_size,
                            "validation_webhook_url": webhook.url,
                        }
                    ],
                }
            )
        )
        lifecycle.up(config.load(path))
        users = [f"buyer-{n}" for n in range(intents)]
        asyncio.run(claims.burst(db1, POOL, users, concurrency=64))
        ceiling = asyncio.run(
            _webhook_ceiling(webhook.url, min(intents, 20_000), batch_size * concurrency)
        )
        argv = [
            sys.executable,
            "-m",
            "intake_cli",
            "-c",
            str(path),
            "drain",
            "--log-level",
            "error",
            "--concurrency",
            str(concurrency),
        ]
        started = time.perf_counter()
        workers = [
            subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
            )
            for _ in range(scenario.processes)
        ]
        try:
            while _archived(db1) < intents:
                if any(w.poll() is not None for w in workers):
                    raise RuntimeError("a drain worker exited early")
                time.sleep(0.05)
            seconds = time.perf_counter() - started
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
    return DrainResult(scenario, intents, seconds, ceiling)


def markdown(results: list[DrainResult]) -> str:
    lines = [
        "| drain processes | webhook delay | intents | seconds | intents/s | per process "
        "| webhook ceiling/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d = r.as_json()
        lines.append(
            f"| {d['processes']} | {d['webhook_delay_ms']} ms | {d['intents']:,} | "
            f"{d['seconds']} | {d['intents_per_sec']:,} | {d['intents_per_sec_per_process']:,} | "
            f"{d['webhook_ceiling_per_sec']:,} | {d['ratio_to_webhook_ceiling']} |"
        )
    return "\n".join(lines)


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{name}: expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise typer.BadParameter(f"{name}: expected non-negative integers, got {text!r}")
    return values


def drain_command(
    intents: int = typer.Option(20_000, "--intents", min=100, help="Intents per scenario."),
    processes: str = typer.Option("1,2", "--processes", help="Drain processes, comma list."),
    webhook_delay_ms: str = typer.Option(
        "0,50", "--webhook-delay-ms", help="Webhook answer delays to measure, comma list."
    ),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Batches in flight."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=10_000),
    quick: bool = typer.Option(False, "--quick", help="A smoke run: 1,000 intents, 1 process."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Drain throughput per process, against the webhook ceiling from the same run."""
    plan = [
        Scenario(p, d)
        for d in _int_list(webhook_delay_ms, "--webhook-delay-ms")
        for p in _int_list(processes, "--processes")
    ]
    if quick:
        intents, plan = 1000, [Scenario(1, 0)]
    workdir = Path(tempfile.mkdtemp(prefix="intake-bench-drain-"))
    workdir.chmod(0o755)
    clusters = EmbeddedClusters(
        workdir / "clusters", config.EmbeddedSettings(max_connections=200, synchronous_commit=True)
    )
    try:
        running = clusters.ensure()
        results = [
            run_scenario(workdir, running, s, intents, concurrency, batch_size) for s in plan
        ]
    finally:
        clusters.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "synchronous_commit": "on"},
        "settings": {"concurrency": concurrency, "batch_size": batch_size},
        "results": [r.as_json() for r in results],
    }
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(markdown(results) + "\n")
