"""`intake bench claims --quick`: the benchmark runs end to end on its own cluster.

A smoke test, not a measurement: two-second runs on a loaded test machine
say nothing about the bar, only that every workload ran and was counted.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from intake_cli.bench import bench_app

WORKLOADS = {"select1", "hot_row", "hot_row_one_statement", "skip_locked", "claim"}


@pytest.fixture(scope="module")
def quick_run() -> dict:
    result = CliRunner().invoke(bench_app, ["claims", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_workload_ran_with_a_positive_rate(quick_run):
    runs = quick_run["runs"]
    assert {run["workload"] for run in runs} == WORKLOADS
    for run in runs:
        assert run["tps"] > 0 and run["transactions"] > 0, run
        assert run["failed"] == 0, run
        assert not run["ran_out"], run
        assert 0 <= run["latency_ms"]["p50"] <= run["latency_ms"]["p99"], run


def test_ratios_and_sellout_come_from_the_same_run(quick_run):
    tps = {run["workload"]: run["tps"] for run in quick_run["runs"]}
    claim_ratio = next(r for r in quick_run["ratios"] if r["workload"] == "claim")
    assert claim_ratio["vs_hot_row"] == pytest.approx(tps["claim"] / tps["hot_row"])
    assert claim_ratio["vs_select1"] == pytest.approx(tps["claim"] / tps["select1"])

    sellout = quick_run["sellout"]
    assert sellout["sold_out"] and sellout["units"] > 0
    assert len(sellout["tenths_per_s"]) == 10
    assert all(rate > 0 for rate in sellout["tenths_per_s"])
    assert len(quick_run["targets"]) == 3
    assert quick_run["machine"]["cores"] >= 1
    assert quick_run["settings"]["synchronous_commit"] is True
