"""`intake bench dashboard --quick` runs end to end and reports its figures (not a timed test)."""

import json

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = pytest.mark.slow


def test_bench_dashboard_quick_reports_both_runs():
    report = json.loads(
        run_intake("bench", "dashboard", "--quick", "--json", check=True, env=scratch_env()).stdout
    )
    base, dashboard = report["results"]
    assert (base["pages"], dashboard["pages"]) == (0, 2)
    assert base["intents"] == dashboard["intents"] == 1000
    # A quick run may cost serve less than one clock tick (10 ms) of CPU: counted, maybe 0.
    assert dashboard["serve_cpu_s"] >= 0 and dashboard["errors"] == []
    # Every page got every row written while the drain ran.
    assert dashboard["rows_written"] > 0
    assert dashboard["rows_seen_by_every_page"] == dashboard["rows_written"]
    assert [t["what"] for t in report["targets"]][1] == "every page got every metrics row"
