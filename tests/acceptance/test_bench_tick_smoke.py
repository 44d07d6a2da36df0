"""`intake bench tick --quick` runs end to end and reports a ratio (not a timed test)."""

import json

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = pytest.mark.slow


def test_bench_tick_quick_reports_its_ratio():
    proc = run_intake(
        "bench", "tick", "--quick", "--interval", "0.2", "--json", check=True, env=scratch_env()
    )
    report = json.loads(proc.stdout)
    [result] = report["results"]
    assert (result["webhook_delay_ms"], result["intents"]) == (0, 1000)
    assert result["ticks_fired"] >= 2 and result["ratio"] > 0
    assert report["settings"]["batch_size"] == 500
    (target,) = report["targets"]
    assert target["measured"] == pytest.approx(result["ratio"], abs=0.005)
    assert target["threshold"] == 0.7
