"""`intake demo`, smaller: the whole engine on embedded clusters, judged by its report."""

from __future__ import annotations

import json

import pytest

from tests.conftest import intake

pytestmark = pytest.mark.slow


def test_a_small_demo_sells_every_unit_once_and_accounts_for_every_claim(workdir):
    directory = workdir / "demo"
    # 1,500 buyers on 250 units: at a 5 % share each, declines and transient
    # failures both occur (none of either in ~270 calls: odds of about 1e-6).
    proc = intake(
        "demo",
        "--buyers", "1500",
        "--units", "250",
        "--decline-share", "0.05",
        "--fail-share", "0.05",
        "--dir", str(directory),
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    counts = report["counts"]
    assert report["ok"] and report["accounted"]
    assert counts["oversold"] == 0 and counts["duplicates_in_db2"] == 0
    assert counts["queue_depth"] == 0 and counts["dead_lettered"] == 0
    assert counts["committed"] == counts["claimed"] - counts["rejected"]
    # Declined units went back on sale and later buyers took most of them
    # (a unit declined after the herd has gone stays unsold).
    assert 250 - counts["rejected"] <= counts["committed"] <= 250
    assert counts["rejected"] > 0 and counts["webhook_transient_failures"] > 0
    # One call per intent, plus one retry for each transient failure.
    assert counts["webhook_calls"] == counts["claimed"] + counts["webhook_transient_failures"]
    assert len(report["drain_workers"]) == 2
    assert sum(w["committed"] for w in report["drain_workers"]) == counts["committed"]
    assert not (directory / ".intake").exists()  # torn down

    # The workers' logs: one JSON object per line; every transition names the
    # message, the pool, the key, the states and how long the step took.
    lines = [
        json.loads(line)
        for path in sorted((directory / "logs").glob("drain-*.log"))
        for line in path.read_text().splitlines()
    ]
    transitions = [line for line in lines if line["event"] == "transition"]
    for line in transitions:
        assert {"msg_id", "pool_id", "idempotency_key", "from_state", "to_state"} <= set(line)
        assert line["pool_id"] == "demo" and line["duration_ms"] is not None
    ends = [line["to_state"] for line in transitions]
    assert ends.count("committed") == counts["committed"]
    assert ends.count("rejected") == counts["rejected"]
