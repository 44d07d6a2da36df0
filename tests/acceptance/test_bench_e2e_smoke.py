"""`intake bench e2e --quick` runs end to end and reports its figures (not a timed test)."""

import json

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = pytest.mark.slow


def test_bench_e2e_quick_commits_every_unit_once():
    result = json.loads(
        run_intake("bench", "e2e", "--quick", "--json", check=True, env=scratch_env()).stdout
    )
    assert (result["buyers"], result["units"]) == (2000, 200)
    assert result["committed"] == 200
    assert result["oversold"] == 0 and result["duplicates_in_db2"] == 0
    assert result["seconds_to_all_committed"] > 0 and result["seconds_to_sell_out"] > 0
    assert result["settings"]["synchronous_commit"] == "on"
    (target,) = result["targets"]
    assert target["measured"] == pytest.approx(result["seconds_to_all_committed"], abs=1e-3)
    assert target["met"] is (result["seconds_to_all_committed"] <= 60)
