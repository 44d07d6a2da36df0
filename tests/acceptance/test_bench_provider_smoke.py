"""`intake bench provider --quick` runs every scenario and reports its figures (the
targets are reported, not asserted: they wait on the worker's governor)."""

import json

import pytest

from tests.conftest import run_intake

pytestmark = pytest.mark.slow

SCENARIOS = ["retry-after", "no-retry-after", "outage", "unlimited"]
FIGURES = {
    "drained_s",
    "first_claim_to_last_commit_s",
    "ideal_s",
    "ratio_to_ideal",
    "claims_per_sec",
    "webhook_calls",
    "calls_429",
    "calls_per_sale",
    "committed",
    "dead_letters",
    "gave_up_after_s",
}


def test_bench_provider_quick_reports_every_scenario():
    report = json.loads(run_intake("bench", "provider", "--quick", "--json", check=True).stdout)
    assert report["settings"]["units"] == 600 and report["settings"]["limit_per_sec"] == 100
    results = {r["scenario"]: r for r in report["results"]}
    assert list(results) == SCENARIOS
    for name, result in results.items():
        assert set(result) >= FIGURES, name
        assert result["units"] == 600
        # Every call the webhook saw, the 429s among them; the sales committed.
        assert result["webhook_calls"] >= result["committed"] + result["calls_429"], name
        assert 0 <= result["committed"] <= 600 and result["dead_letters"] >= 0
        assert result["duplicates_in_db2"] == 0
        if result["drained_s"] is not None:
            assert result["committed"] == 600 and result["drained_s"] > 0
    assert results["retry-after"]["ideal_s"] == pytest.approx(6.0)
    assert results["no-retry-after"]["provider"]["retry_after"] == "none"
    assert results["outage"]["ideal_s"] == pytest.approx(9.0)
    assert results["outage"]["pool"]["max_retries"] == 2
    assert results["outage"]["outage"]["began_after_s"] > 0
    assert results["unlimited"]["ideal_s"] is None
    assert results["unlimited"]["calls_429"] == 0
    # The unlimited drain has no provider to wait on: it commits every unit.
    assert results["unlimited"]["committed"] == 600
    assert results["unlimited"]["claims_per_sec"] > 0
    assert {t["what"].split(":")[0] for t in report["targets"]} == set(SCENARIOS)
    assert all({"measured", "threshold", "met", "shown"} <= set(t) for t in report["targets"])
