"""`intake bench drain --quick` runs end to end and reports a figure (not a timed test)."""

import json

from tests.conftest import run_intake


def test_bench_drain_quick_reports_its_scenario():
    proc = run_intake("bench", "drain", "--quick", "--json", check=True)
    report = json.loads(proc.stdout)
    [result] = report["results"]
    assert (result["processes"], result["webhook_delay_ms"], result["intents"]) == (1, 0, 1000)
    assert result["intents_per_sec"] > 0 and result["webhook_ceiling_per_sec"] > 0
    assert report["machine"]["synchronous_commit"] == "on"
