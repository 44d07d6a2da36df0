"""`GET /metrics`: Prometheus / OpenMetrics exposition of what `intake watch` shows.

A collector built per scrape from the newest engine_metrics rows, the
worker registry and the webhook governors (read exactly as `watch` reads
them: no COUNT on a live table), plus the ticks this process ran. Open on
loopback; off loopback it needs the admin token (see auth.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from intake_cli.faces import watch
from intake_cli.faces.serve import tick
from intake_cli.faces.serve.state import ENDPOINTS
from intake_cli.platform.db import connect

# engine_metrics column → (metric name, help), one sample per pool.
POOL_GAUGES = {
    "inventory": ("intake_pool_inventory", "Units on sale in the pool."),
    "available_slots": ("intake_pool_available", "Units still available."),
    "locked": ("intake_pool_locked", "Units held by a claim not yet drained."),
    "consumed": ("intake_pool_consumed", "Units sold: committed in DB2."),
    "rejected": ("intake_pool_rejected", "Intents the webhook declined."),
    "dead_lettered": ("intake_pool_dead", "Intents in the dead-letter queue."),
    "processing_velocity": ("intake_pool_velocity", "Commits per second at the last collection."),
    "webhook_error_rate": (
        "intake_pool_webhook_error_rate",
        "Failed webhook calls over all calls since the previous collection.",
    ),
    "paused": ("intake_pool_paused", "1 while the pool is paused."),
    "recovering": ("intake_pool_recovering", "1 while the inventory is rebuilt after a crash."),
}
# The queue's figures (the same in every pool's row).
ENGINE_GAUGES = {
    "queue_depth": ("intake_queue_depth", "Intents waiting in the queue."),
    "in_flight": ("intake_queue_in_flight", "Intents read by a worker and not finished."),
    "dlq_depth": ("intake_dlq_depth", "Messages in the dead-letter queue."),
    "oldest_msg_age_s": ("intake_queue_oldest_seconds", "Age of the oldest queued intent."),
}
# The webhook governor's figures (read live, not collected), one sample per pool.
# Pools that share a webhook URL share its governor, and so its figures.
WEBHOOK_GAUGES = {
    "governed_rate": (
        "intake_webhook_governed_rate",
        "Webhook calls per second the governor allows now (absent: no limit; "
        "0 while the breaker is open).",
    ),
    "learned_rate": (
        "intake_webhook_learned_rate",
        "Webhook calls per second learned from the provider's 429s (absent until the first).",
    ),
    "retry_after_s": (
        "intake_webhook_retry_after_seconds",
        "Seconds a Retry-After still holds every webhook call back (0: none).",
    ),
    "breaker_open": (
        "intake_webhook_breaker_open",
        "1 while the webhook's circuit breaker is open (one probe call every few seconds).",
    ),
    "throttled_share": (
        "intake_webhook_throttled_share",
        "Webhook calls answered 429 over all calls in the last full second (absent: no calls).",
    ),
}
# Reset when a DB1 crash or promotion empties the (UNLOGGED) governors.
WEBHOOK_COUNTERS = {
    "calls_total": ("intake_webhook_calls", "Webhook calls the fleet reported to the governor."),
    "throttled_total": (
        "intake_webhook_throttled",
        "Webhook calls the provider refused for now (429, or 503 with Retry-After).",
    ),
}
WORKER_OUTCOMES = ("committed", "rejected", "retried", "dead_lettered")
TICK_OUTCOMES = ("committed", "rejected", "retried", "dead", "refused", "handed_back", "read")


class Frozen(Collector):
    """Metric families computed before the scrape (the reading happens off the event loop)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def tick_families(state: dict[str, Any]) -> list[Metric]:
    """Whether the drain's HTTP ticks still arrive (pg_net never says when they do not)."""
    out: list[Metric] = [
        GaugeMetricFamily(
            "intake_drain_tick_expected",
            "1 when ticks are expected (DB1 schedules the tick job, a tick arrived, or told so).",
            value=float(state["expected"]),
        ),
        GaugeMetricFamily(
            "intake_drain_tick_stale",
            "1 when ticks are expected and none arrived for intake_drain_tick_stale_after_seconds.",
            value=float(state["stale"]),
        ),
        GaugeMetricFamily(
            "intake_drain_tick_stale_after_seconds",
            "How long without a tick counts as stopped.",
            value=float(state["stale_after_s"]),
        ),
    ]
    if state["age_s"] is not None:
        out.append(
            GaugeMetricFamily(
                "intake_drain_tick_age_seconds",
                "Seconds since the last tick arrived at this process.",
                value=float(state["age_s"]),
            )
        )
    return out


def webhook_families(pools: list[dict[str, Any]]) -> list[Metric]:
    """The governors' gauges and counters; a figure that does not exist (no limit,
    nothing learned, no calls) is left out rather than drawn as a number."""
    governed = [(pool["pool_id"], pool["webhook"]) for pool in pools if pool.get("webhook")]
    out: list[Metric] = []
    for key, (name, doc) in WEBHOOK_GAUGES.items():
        gauge = GaugeMetricFamily(name, doc, labels=["pool"])
        for pool_id, webhook in governed:
            value = webhook["breaker"] == "open" if key == "breaker_open" else webhook[key]
            if value is not None:
                gauge.add_metric([pool_id], float(value))
        out.append(gauge)
    for key, (name, doc) in WEBHOOK_COUNTERS.items():
        counter = CounterMetricFamily(name, doc, labels=["pool"])
        for pool_id, webhook in governed:
            counter.add_metric([pool_id], float(webhook[key]))
        out.append(counter)
    return out


def families(snap: dict[str, Any], ticks: dict[str, int]) -> list[Metric]:
    out: list[Metric] = []
    for column, (name, doc) in POOL_GAUGES.items():
        gauge = GaugeMetricFamily(name, doc, labels=["pool"])
        for pool in snap["pools"]:
            value = pool[column]
            if value is not None:
                gauge.add_metric([pool["pool_id"]], float(value))
        out.append(gauge)
    out += webhook_families(snap["pools"])
    for key, (name, doc) in ENGINE_GAUGES.items():
        if snap[key] is not None:
            out.append(GaugeMetricFamily(name, doc, value=float(snap[key])))
    age = snap["metrics_age_s"]
    if age is not None:
        out.append(
            GaugeMetricFamily(
                "intake_metrics_age_seconds", "Age of the newest engine_metrics row.", value=age
            )
        )
    out.append(
        GaugeMetricFamily(
            "intake_metrics_stale", "1 when the metrics are older than 15 s.", value=snap["stale"]
        )
    )
    heartbeat = GaugeMetricFamily(
        "intake_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat.",
        labels=["worker", "state"],
    )
    outcomes = CounterMetricFamily(
        "intake_worker_outcomes",
        "Intents a registered worker finished, by outcome.",
        labels=["worker", "outcome"],
    )
    batches = CounterMetricFamily(
        "intake_worker_batches", "Batches a registered worker ran.", labels=["worker"]
    )
    for worker in snap["workers"]:
        wid = worker["worker_id"]
        heartbeat.add_metric([wid, worker["state"]], float(worker["heartbeat_age_s"]))
        batches.add_metric([wid], float(worker["batches"]))
        for outcome in WORKER_OUTCOMES:
            outcomes.add_metric([wid, outcome], float(worker[outcome]))
    out += [heartbeat, outcomes, batches]
    tick = CounterMetricFamily(
        "intake_tick_intents",
        "Intents handled by this process's HTTP ticks, by outcome.",
        labels=["outcome"],
    )
    for outcome in TICK_OUTCOMES:
        tick.add_metric([outcome], float(ticks.get(outcome, 0)))
    out.append(tick)
    out.append(
        CounterMetricFamily(
            "intake_ticks", "Ticks that read a batch.", value=float(ticks.get("batches", 0))
        )
    )
    return out


async def get_metrics(request: web.Request) -> web.Response:
    dsn = request.app[ENDPOINTS].db1

    tick_watch = request.app[tick.WATCH]

    def read() -> dict[str, Any]:
        with connect(dsn, "DB1") as conn:
            tick_watch.read_job(conn)
            # As the live view reads: collected here only where nothing is
            # scheduled and the newest row is a full interval old.
            return watch.read(conn).as_json()

    snap = await asyncio.to_thread(read)
    ticker = request.app.get(tick.TICKER)
    registry = CollectorRegistry(auto_describe=False)
    found = families(snap, dict(ticker.totals) if ticker else {})
    registry.register(Frozen(found + tick_families(tick_watch.state())))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def install(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)
