"""`intake bench tick`: drain throughput through the HTTP tick against `intake drain`.

The issue's bar: a scheduler calling `POST /api/drain/tick` every second,
batch 500, drains at least 70% as fast as one `intake drain` process with
one batch in flight (`--concurrency 1`), measured in the same run on fresh
databases, the same webhook and the same number of intents.

The scheduler fires on the second whether or not the previous tick has
answered, as pg_cron + pg_net or a cloud scheduler does; a tick that finds
the queue empty answers at once.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer

from intake_cli.platform import config
from intake_cli.platform.embedded import Cluster
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.cpu import cpu_times
from intake_cli.tools.bench.common.options import json_option, output_option, webhook_delays_ms
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    publish,
    targets_json,
    targets_markdown,
)
from intake_cli.tools.webhook_process import WebhookServer

TARGET_RATIO = 0.70


@dataclass(frozen=True)
class Pair:
    webhook_delay_ms: int
    intents: int
    drain_s: float
    tick_s: float
    ticks: int
    tick_cpu_busy: float

    @property
    def ratio(self) -> float:
        return self.drain_s / self.tick_s

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook_delay_ms": self.webhook_delay_ms,
            "intents": self.intents,
            "drain_one_slot_s": round(self.drain_s, 2),
            "drain_one_slot_per_sec": round(self.intents / self.drain_s),
            "tick_s": round(self.tick_s, 2),
            "tick_per_sec": round(self.intents / self.tick_s),
            "ticks_fired": self.ticks,
            "ratio": round(self.ratio, 2),
            "tick_machine_cpu_busy": round(self.tick_cpu_busy, 3),
        }


async def _schedule(url: str, db1: str, intents: int, interval_s: float) -> tuple[float, int]:
    """Fire a tick every interval until every intent is archived; (seconds, ticks fired)."""
    fired: list[asyncio.Task[httpx.Response]] = []
    headers = {"Authorization": f"Bearer {events.TOKEN}"}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        started = time.perf_counter()
        while await asyncio.to_thread(events.archived_count, db1) < intents:
            due = started + len(fired) * interval_s
            if time.perf_counter() >= due:
                fired.append(asyncio.create_task(client.post(url + "/api/drain/tick", json={})))
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        for response in await asyncio.gather(*fired):
            if response.status_code != 200:
                raise RuntimeError(f"a tick answered {response.status_code}: {response.text}")
    return seconds, len(fired)


def _ticks_through(path: Path, intents: int, interval_s: float) -> tuple[float, int]:
    with tempfile.TemporaryFile() as log, events.serving(path, log) as (_, url):
        return asyncio.run(_schedule(url, events.db1_dsn(path), intents, interval_s))


def run_pair(
    workdir: Path, clusters: dict[str, Cluster], delay_ms: int, intents: int, interval_s: float
) -> Pair:
    with WebhookServer(delay_ms=delay_ms) as webhook:
        drained = events.claimed_event(
            workdir, clusters, f"bench_tick_drain_d{delay_ms}", webhook.url, intents
        )
        ticked = events.claimed_event(
            workdir, clusters, f"bench_tick_tick_d{delay_ms}", webhook.url, intents
        )
        drain_s = events.drain_until_archived(drained, intents, concurrency=1)
        before = cpu_times()
        tick_s, ticks = _ticks_through(ticked, intents, interval_s)
        used = cpu_times() - before
    return Pair(delay_ms, intents, drain_s, tick_s, ticks, used.busy_share)


def markdown(pairs: list[Pair]) -> str:
    lines = [
        "| webhook delay | intents | drain 1 slot/s | ticks/s | ticks fired | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in (pair.as_json() for pair in pairs):
        lines.append(
            f"| {p['webhook_delay_ms']} ms | {p['intents']:,} | {p['drain_one_slot_per_sec']:,} "
            f"| {p['tick_per_sec']:,} | {p['ticks_fired']} | {p['ratio']} |"
        )
    return "\n".join(lines)


def tick_command(
    intents: int = typer.Option(5000, "--intents", min=100, help="Intents per measurement."),
    webhook_delay_ms: str = typer.Option(
        "0,300", "--webhook-delay-ms", help="Webhook answer delays to measure, comma list."
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.1, max=60, help="Seconds per tick."),
    output: Path | None = output_option(),
    quick: bool = typer.Option(False, "--quick", help="A smoke run: 1,000 intents, no delay."),
    as_json: bool = json_option("a table"),
) -> None:
    """Drain throughput through HTTP ticks (batch 500, one per --interval) vs `intake drain
    --concurrency 1`, same run; the target is a ratio of at least 0.70."""
    delays = webhook_delays_ms(webhook_delay_ms)
    if quick:
        intents, delays = 1000, (0,)
    settings = config.EmbeddedSettings(max_connections=200)
    with (
        events.workdir("tick") as workdir,
        events.durable_clusters(workdir, settings) as (_, running),
    ):
        pairs = [run_pair(workdir, running, d, intents, interval) for d in delays]
    found = targets_json(
        Target.at_least(
            f"ticks >= {TARGET_RATIO:.0%} of one drain slot "
            f"(webhook delay {p.webhook_delay_ms} ms)",
            p.ratio,
            TARGET_RATIO,
            f"{p.ratio:.2f}",
        )
        for p in pairs
    )
    report = {
        "machine": machine(synchronous_commit="on"),
        "settings": {"batch_size": 500, "tick_interval_s": interval, "drain_concurrency": 1},
        "results": [p.as_json() for p in pairs],
        "targets": found,
    }
    publish(
        report,
        "tick",
        output,
        as_json,
        lambda: markdown(pairs) + "\n\n" + targets_markdown(found),
    )
