"""`intake bench gateway --quick` runs end to end and reports its figures (not a timed test)."""

import json
import shutil

import pytest

from tests.conftest import run_intake, scratch_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)"),
]


def test_bench_gateway_quick_claims_through_the_gateway_into_db1():
    result = json.loads(
        run_intake("bench", "gateway", "--quick", "--json", check=True, env=scratch_env()).stdout
    )
    settings = result["settings"]
    assert settings["synchronous_commit"] is True and settings["keep_alive"] is True

    (single,) = result["single_claim"]
    assert single["workload"] == "claim" and single["intents"] > 0 and not single["ran_out"]
    assert result["single_claim_best_per_s"] == single["claims_per_s"] > 0

    (run,) = result["herd"]
    assert (run["workers"], run["max_batch"], run["max_wait_ms"]) == (1, 100, 2.0)
    # Claims really made: intents in DB1's queue, each one a gateway answer,
    # from distinct buyers (every answer "claimed", none refused).
    assert 0 < run["claims"] <= settings["buyers_per_run"]
    assert run["gateway"]["claims"] == run["claims"]
    assert run["non_2xx"] == 0 and not run["buyers_reused"]
    assert 0 < run["gateway"]["claim_batches"] <= run["claims"]
    assert run["claims_per_s"] > 0 and run["p99_ms"] > 0
    # Where the cores went: the gateway and DB1 both worked during the herd.
    assert set(run["cpu_s"]) == {"gateway", "db1", "wrk"}
    assert run["cpu_s"]["gateway"] > 0 and run["cpu_s"]["db1"] > 0
    assert single["cpu_s"]["db1"] > 0 and single["cpu_us_per_claim"] > 0
    assert run["vs_single_claim_per_cpu"] > 0
    assert run["vs_single_claim"] == pytest.approx(
        run["claims_per_s"] / single["claims_per_s"], abs=0.001
    )

    lookups = result["lookups"]
    alone, beside = lookups["herd_alone"], lookups["herd_beside_lookups"]
    assert alone["claims"] > 0 and beside["claims"] > 0
    assert beside["gateway"]["reads"] == lookups["lookups_during_herd"] > 0
    # The reads came from the snapshot, not from a DB1 query each.
    assert lookups["snapshot_reads_during_herd"] < lookups["lookups_during_herd"]
    assert alone["gateway"]["reads"] == 0
    # Lookups alone: the gateway's own CPU per lookup, read directly.
    by_themselves = lookups["lookups_alone"]
    assert by_themselves["lookups"] > 0 and by_themselves["non_2xx"] == 0
    assert by_themselves["gateway_cpu_us_per_lookup"] > 0

    names = [t["what"] for t in result["targets"]]
    # Lookups were answered beside claims (asserted above): both CPU bars judged.
    assert len(names) == 6 and all(isinstance(t["met"], bool) for t in result["targets"])
    assert "gateway CPU <= 60 µs per claim" in names
    assert "gateway CPU <= 40 µs per lookup" in names
