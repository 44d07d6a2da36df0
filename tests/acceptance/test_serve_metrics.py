"""/metrics parsed by prometheus-client's own text parser: the figures `intake watch` shows."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import make_event
from tests.acceptance.serve_support import serving
from tests.conftest import intake

POOL_GAUGES = {
    "intake_pool_inventory": "inventory",
    "intake_pool_available": "available_slots",
    "intake_pool_locked": "locked",
    "intake_pool_consumed": "consumed",
    "intake_pool_rejected": "rejected",
    "intake_pool_dead": "dead_lettered",
    "intake_pool_velocity": "processing_velocity",
    "intake_pool_webhook_error_rate": "webhook_error_rate",
    "intake_pool_paused": "paused",
}
ENGINE_GAUGES = {
    "intake_queue_depth": "queue_depth",
    "intake_queue_in_flight": "in_flight",
    "intake_dlq_depth": "dlq_depth",
}


def samples(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


@pytest.mark.slow
def test_gauges_equal_watch_once_json(workdir, db1_dsn, db2_dsn):
    with WebhookServer(decline_share=0.3) as webhook:
        event = make_event(workdir, db1_dsn, db2_dsn, webhook.url, 100, batch_size=40)
        event.claim(60)
        with serving(event.config) as server:
            status, counts = server.call("POST", "/api/drain/tick")
            assert status == 200 and counts["read"] == 40, counts
            # watch collects a row (no pg_cron here); /metrics reads that same newest row.
            watched = json.loads(
                intake("watch", "--once", "--json", config=event.config, check=True).stdout
            )
            scraped = samples(server.request("GET", "/metrics", token=None).text)
    [pool] = watched["pools"]
    assert pool["consumed"] + pool["rejected"] == 40 and pool["locked"] == 20
    for name, column in POOL_GAUGES.items():
        [sample] = scraped[name]
        assert sample.labels == {"pool": "drop"}
        assert sample.value == float(pool[column]), name
    for name, key in ENGINE_GAUGES.items():
        assert scraped[name][0].value == float(watched[key]), name
    assert scraped["intake_metrics_stale"][0].value == 0.0
    # The tick's outcomes, counted by this server, and its liveness in the registry.
    ticks = {
        s.labels["outcome"]: s.value
        for s in scraped["intake_tick_intents"]
        if s.name.endswith("_total")
    }
    assert ticks["read"] == 40
    assert ticks["committed"] == pool["consumed"] and ticks["rejected"] == pool["rejected"]
    [beat] = scraped["intake_worker_heartbeat_age_seconds"]
    assert ":tick-" in beat.labels["worker"] and beat.labels["state"] == "alive"


def test_metrics_need_the_token_off_loopback(workdir, db1_dsn, db2_dsn):
    event = make_event(workdir, db1_dsn, db2_dsn, "http://127.0.0.1:9/validate", 5)
    with serving(event.config, host="0.0.0.0") as server:
        refused = server.request("GET", "/metrics", token=None)
        assert refused.status_code == 401
        assert refused.json()["field"] is None
        allowed = server.request("GET", "/metrics")
        assert allowed.status_code == 200
        assert "intake_pool_inventory" in samples(allowed.text)
