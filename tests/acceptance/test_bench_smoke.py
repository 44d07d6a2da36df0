"""`intake bench claims --quick --pooler --standby` and `intake bench seeding
--quick`: the benchmarks run end to end on their own clusters (and a real
PgBouncer, and a synchronous standby).

Smoke tests, not measurements: one-second runs on a loaded test machine say
nothing about the bar, only that every workload ran and was counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intake_cli.faces.cli import app
from intake_cli.tools.bench.app import bench_app
from tests.conftest import scratch_tempdir

# One benchmark run, shared by the module (the pooled runs and the standby's
# in the same run, as an operator may ask for both), takes most of a minute.
pytestmark = pytest.mark.slow

WORKLOADS = {
    "select1",
    "hot_row",
    "hot_row_one_statement",
    "skip_locked",
    "intent_insert",
    "number_unit_intent",
    "claim",
    "claim_batch_10",
    "select1_pooler",
    "claim_pooler",
}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


@pytest.fixture(scope="module")
def quick_run(results_dir: Path) -> dict:
    with scratch_tempdir():
        result = CliRunner().invoke(
            bench_app,
            [
                "claims",
                "--quick",
                "--json",
                "--output",
                str(results_dir),
                "--chart",
                str(results_dir),
                "--pooler",
                "--standby",
            ],
        )
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
        assert run["claims_per_s"] == pytest.approx(run["tps"] * run["batch"], rel=1e-4)


def test_batched_claims_are_real_claims(quick_run):
    batch = next(run for run in quick_run["runs"] if run["workload"] == "claim_batch_10")
    assert batch["batch"] == 10
    # Every buyer of every finished transaction queued an intent (no buyer
    # repeats within a run; transactions cut off by its end may add a few).
    assert batch["intents"] >= batch["transactions"] * 10
    single = next(run for run in quick_run["runs"] if run["workload"] == "claim")
    assert single["intents"] >= single["transactions"]
    # The claim's bare shape takes a real unit of the bench pool for each intent.
    shape = next(run for run in quick_run["runs"] if run["workload"] == "number_unit_intent")
    assert shape["intents"] >= shape["transactions"] > 0
    # Through the pooler too: each claim is a real intent in the queue.
    pooled = next(run for run in quick_run["runs"] if run["workload"] == "claim_pooler")
    assert pooled["intents"] >= pooled["transactions"] > 0
    assert quick_run["settings"]["batch_sizes"] == [10]


def test_ratios_targets_and_sellout_come_from_the_same_run(quick_run):
    rate = {run["workload"]: run["claims_per_s"] for run in quick_run["runs"]}
    claim_ratio = next(r for r in quick_run["ratios"] if r["workload"] == "claim")
    assert claim_ratio["vs_hot_row"] == pytest.approx(rate["claim"] / rate["hot_row"])
    assert claim_ratio["vs_skip_locked"] == pytest.approx(rate["claim"] / rate["skip_locked"])
    assert claim_ratio["vs_select1"] == pytest.approx(rate["claim"] / rate["select1"])
    assert claim_ratio["vs_intent_insert"] == pytest.approx(rate["claim"] / rate["intent_insert"])
    batch_ratio = next(r for r in quick_run["ratios"] if r["workload"] == "claim_batch_10")
    assert batch_ratio["vs_hot_row"] == pytest.approx(rate["claim_batch_10"] / rate["hot_row"])
    # A pooled claim is held to SELECT 1 through the same pooler.
    pooled_ratio = next(r for r in quick_run["ratios"] if r["workload"] == "claim_pooler")
    assert pooled_ratio["vs_select1"] == pytest.approx(
        rate["claim_pooler"] / rate["select1_pooler"]
    )

    sellout = quick_run["sellout"]
    assert sellout["sold_out"] and sellout["units"] > 0
    assert len(sellout["tenths_per_s"]) == 10
    assert all(rate > 0 for rate in sellout["tenths_per_s"])

    targets = quick_run["targets"]
    assert len(targets) == 8
    # The claim against its own floor, the durable intent insert, in the same run.
    floor = next(t for t in targets if "durable intent insert" in t["what"])
    assert floor["measured"] == pytest.approx(rate["claim"] / rate["intent_insert"], abs=1e-4)
    # The pooler's target, then the standby's (test_claims_quick_with_a_synchronous_standby).
    pooled_target = targets[-2]
    assert pooled_target["what"].startswith("claim via PgBouncer")
    assert pooled_target["measured"] == pytest.approx(
        rate["claim_pooler"] / rate["claim"], abs=1e-4
    )
    for target in targets:
        assert target["detail"]["clients"] == 16
        assert (target["short_by"] is None) == target["met"], target
        if not target["met"]:
            assert 0 < target["short_by"] <= 1
    assert quick_run["machine"]["cores"] >= 1
    assert quick_run["settings"]["synchronous_commit"] is True


def test_results_saved_with_a_chart_beside_them(quick_run, results_dir):
    (saved,) = results_dir.glob("claims-*cores.json")
    assert json.loads(saved.read_text())["runs"] == quick_run["runs"]
    chart = saved.with_suffix(".png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_claims_quick_with_a_synchronous_standby(quick_run):
    """--standby: the claims again with DB1's synchronous standby, judged against
    the same run's claims without it, replication synchronous after each run."""
    document = quick_run
    rate = {run["workload"]: run["claims_per_s"] for run in document["runs"]}
    rows = document["standby"]
    assert {(row["workload"], row["clients"]) for row in rows} == {
        ("claim", 16),
        ("claim_batch_10", 16),
    }
    for row in rows:
        assert row["verdict"] == "synchronous", row
        assert row["without_per_s"] == rate[row["workload"]]
        assert row["with_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["with_per_s"] / row["without_per_s"], abs=1e-4)
    target = document["targets"][-1]
    assert target["what"].startswith("claim_batch_10 with a synchronous standby")
    assert document["settings"]["standby"] is True


def test_seeding_quick():
    with scratch_tempdir():
        result = CliRunner().invoke(app, ["bench", "seeding", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    (run,) = document["runs"]
    assert run["units"] == document["settings"]["units"] == 100_000
    assert run["units_per_s"] > 0 and run["floor_units_per_s"] > 0
    assert document["settings"]["synchronous_commit"] is True
    # No bar to judge a seed by, but the same place a reader looks for one.
    assert document["targets"] == []
