"""`intake bench recovery --quick` crashes DB1 for real, rebuilds, verifies (not a timed test)."""

import json

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = pytest.mark.slow


def test_bench_recovery_quick_rebuilds_exactly_and_reports_beside_its_baseline():
    report = json.loads(
        run_intake("bench", "recovery", "--quick", "--json", check=True, env=scratch_env()).stdout
    )
    assert report["verified"] is True and report["problems"] == []
    assert report["units"] == 20_000 and report["synchronous_commit"] == "on"
    assert (report["in_flight"], report["archived"], report["rejected"]) == (2_000, 2_000, 200)
    # Every kind of durable fact the rebuild reads is there.
    assert all(report["facts"][table] > 0 for table in ("queue", "archive", "dlq", "dlq_archive"))
    assert report["machine"]["cores"] >= 1
    assert len(report["results"]) == report["runs"]
    for run in report["results"]:
        assert run["verified"] is True
        assert run["detect_s"] > 0 and run["rebuild_s"] > 0 and run["baseline_s"] > 0
        assert run["total_s"] >= run["rebuild_s"]
    for key in ("detect_s", "rebuild_s", "total_s", "baseline_s"):
        assert report["median"][key] > 0
    assert report["ratio_to_baseline"] > 0
    (target,) = report["targets"]
    assert target["met"] is (report["median"]["total_s"] < 10)
    assert target["measured"] == report["median"]["total_s"] and target["threshold"] == 10
