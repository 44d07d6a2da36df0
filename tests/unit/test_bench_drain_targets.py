"""`intake bench drain` judges one process against the bare drain by rate and by CPU per intent."""

from __future__ import annotations

from intake_cli.tools.bench.common.cpu import CpuSample
from intake_cli.tools.bench.common.results import median_of_rounds
from intake_cli.tools.bench.drain import DrainResult, Scenario, Steady, markdown, targets


def _result(scenario: Scenario, per_sec: float, worker_ms: float) -> DrainResult:
    steady = Steady(per_sec, 1.0, 0.5, {"workers": worker_ms, "ours": worker_ms})
    return DrainResult(scenario, 10_000, 10_000 / per_sec, CpuSample(5.0, 10.0), steady=steady)


def test_the_bare_drain_target_carries_both_processes_cpu_per_intent():
    bare = _result(Scenario(1, 0, bare=True), 2000, 0.2)
    ours = _result(Scenario(1, 0), 1700, 0.25)
    [reference] = [t for t in targets([bare, ours]) if "bare Python drain" in t.what]
    assert reference.met and reference.shown == "0.85x (CPU per intent 0.80x)"
    assert reference.detail == {
        "bare_per_sec": 2000,
        "worker_cpu_ms_per_intent": 0.25,
        "bare_worker_cpu_ms_per_intent": 0.2,
        "cpu_ratio": 0.8,
    }


def test_the_table_shows_each_drains_own_cpu_per_intent():
    bare = _result(Scenario(1, 0, bare=True), 2000, 0.2)
    ours = _result(Scenario(1, 0), 1700, 0.25)
    assert [r.as_json()["worker_cpu_ms_per_intent"] for r in (bare, ours)] == [0.2, 0.25]
    header, _, first, second = markdown([bare, ours]).splitlines()[:4]
    assert "drain CPU ms/intent" in header
    assert "| 0.2 |" in first and "| 0.25 |" in second


def test_rounds_are_judged_on_their_median_round():
    rounds = [
        [_result(Scenario(1, 0, bare=True), 2000, 0.2), _result(Scenario(1, 0), ours, 0.25)]
        for ours in (1800, 1400, 1500)
    ]
    # The second round ran last to first, as the benchmark alternates them.
    rounds[1].reverse()
    by_round = [targets(one) for one in rounds]
    [reference] = [t for t in median_of_rounds(by_round) if "bare Python drain" in t.what]
    assert reference.measured == 0.75 and not reference.met
    assert reference.shown == (
        "0.75x (CPU per intent 0.80x); median of 3 rounds: 0.90x, 0.70x, 0.75x"
    )
    assert reference.detail["rounds"] == [0.9, 0.7, 0.75]
    assert reference.detail["bare_per_sec"] == 2000


def test_one_round_is_judged_as_it_is():
    one = targets(
        [_result(Scenario(1, 0, bare=True), 2000, 0.2), _result(Scenario(1, 0), 1700, 0.25)]
    )
    assert median_of_rounds([one]) == one
