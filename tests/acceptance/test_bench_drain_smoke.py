"""`intake bench drain --quick` runs end to end and reports a figure (not a timed test)."""

import json

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = pytest.mark.slow


def test_bench_drain_quick_reports_its_scenario():
    proc = run_intake("bench", "drain", "--quick", "--json", check=True, env=scratch_env())
    report = json.loads(proc.stdout)
    bare, result = report["results"]
    # The bare Python drain ran first on the same shape, and is the reference
    # for one process.
    assert (bare["code"], bare["processes"], bare["intents"]) == ("bare Python drain", 1, 1000)
    assert bare["intents_per_sec"] > 0
    assert result["code"] == "this tree"
    [reference] = [t for t in report["targets"] if "bare Python drain" in t["what"]]
    assert reference["measured"] > 0 and reference["detail"]["bare_per_sec"] > 0
    assert (result["processes"], result["webhook_delay_ms"], result["intents"]) == (1, 0, 1000)
    assert result["intents_per_sec"] > 0 and result["webhook_ceiling_per_sec"] > 0
    assert result["db2_ceiling_per_sec"] > 0
    assert report["machine"]["synchronous_commit"] == "on"
    assert report["settings"]["webhook_processes"] >= 1

    # Where the time went, from the worker itself: every batch was read once
    # and went through the webhook, the DB2 commit and DB1's finish.
    phases = result["phases"]
    assert phases["workers"] == 1 and phases["batches"] >= 2
    assert {"read", "validate", "db1_mark", "commit", "db2_commit", "finish"} <= set(
        phases["ms_per_batch"]
    )
    shares = phases["share_of_slot_time"]
    assert set(shares) == {"read", "validate", "commit", "finish", "idle"}
    assert 0.98 <= sum(shares.values()) <= 1.02

    # Both clusters were sampled; every share is a share.
    waits = result["wait_events"]
    assert waits["samples"] > 0 and set(waits) == {"samples", "db1", "db2"}
    for cluster in ("db1", "db2"):
        assert all(0 < w["share"] <= 1 for w in waits[cluster]["top"])

    parts = result["cpu_ms_per_intent_by_part"]
    assert set(parts) == {"workers", "webhook", "db1", "db2", "ours"}
    assert parts["ours"] > 0 and parts["db1"] > 0 and parts["workers"] > 0
    assert result["cpu_ms_per_intent"] > 0 and result["limit"]
