"""`intake bench metrics --quick` runs end to end and reports every state (not a timed test)."""

import json

from tests.conftest import run_intake, scratch_env


def test_bench_metrics_quick_reports_each_state_beside_its_baseline():
    report = json.loads(
        run_intake("bench", "metrics", "--quick", "--json", check=True, env=scratch_env()).stdout
    )
    assert [s["queue_depth"] for s in report["states"]] == [0, 1000, 1000]
    for state in report["states"]:
        assert state["collect"]["median_ms"] > 0
        assert state["count_inventory_baseline"]["median_ms"] > 0
    assert report["units"] == 20_000 and report["synchronous_commit"] == "on"
    (target,) = report["targets"]
    worst = max(state["collect"]["p95_ms"] for state in report["states"])
    assert target["measured"] == worst and target["met"] is (worst < 50)
