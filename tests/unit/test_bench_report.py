"""The claim benchmark's verdicts, from known figures (no database)."""

from __future__ import annotations

import sys

import pytest

from intake_cli.platform.errors import UsageError
from intake_cli.tools.bench import chart as bench_chart
from intake_cli.tools.bench.claims import Report, Sellout, markdown, parse_batch_sizes
from intake_cli.tools.bench.common.pgbench import Run
from intake_cli.tools.bench.common.results import Target, targets_markdown


def run(workload: str, clients: int, tps: float, batch: int = 1) -> Run:
    return Run(
        workload=workload,
        clients=clients,
        duration_s=15,
        tps=tps,
        transactions=int(tps * 15),
        failed=0,
        latency_ms={"avg": 1.0, "p50": 1.0, "p99": 2.0},
        batch=batch,
        claims_per_s=tps * batch,
    )


def report() -> Report:
    figures = {
        64: {"select1": 80_000, "hot_row": 1_300, "skip_locked": 4_000, "claim": 7_000},
        256: {"select1": 60_000, "hot_row": 500, "skip_locked": 2_000, "claim": 5_400},
    }
    runs = [run(w, c, tps) for c, by in figures.items() for w, tps in by.items()]
    runs += [run("hot_row_one_statement", c, 900) for c in figures]
    runs += [run("claim_batch_100", 64, 560, 100), run("claim_batch_100", 256, 400, 100)]
    return Report(
        machine={"cores": 2, "postgresql": "15", "platform": "x", "pgbench": "15"},
        settings={
            "clients": [64, 256],
            "batch_sizes": [100],
            "synchronous_commit": True,
            "duration_s": 15,
            "pgbench_threads": 2,
        },
        runs=runs,
        sellout=Sellout(256, 30_000, True, 2.0, 5.0, [5000.0] + [4600.0] * 9),
    )


def test_targets_at_256_clients_say_by_how_much_they_miss():
    targets = {t.what: t for t in report().targets()}
    claims = targets["claim >= 6,000 claims/s"]
    assert (claims.detail["clients"], claims.met, claims.short_by) == (256, False, 0.1)
    hot = targets["claim >= 10x hot row (transaction)"]
    assert hot.met and hot.measured == pytest.approx(10.8) and hot.short_by is None
    skip = targets["claim >= 3x literal SKIP LOCKED"]
    assert skip.measured == pytest.approx(2.7) and skip.short_by == pytest.approx(0.1)
    sellout = targets["sell-out: last tenth >= 90% of the first's rate"]
    assert sellout.met and sellout.measured == pytest.approx(0.92)
    batched = targets["batched claims (x100) >= 50,000 claims/s"]
    assert batched.measured == 40_000 and batched.short_by == pytest.approx(0.2)
    assert batched.detail["best"] == {"clients": 64, "claims_per_s": 56_000}


def test_one_result_shape_for_every_bar():
    """A bar at most, a bar at least, and one missed for a reason its figure does not
    show, all saved in the same fields."""
    fast = Target.at_most("p95 < 50 ms", 60.0, 50.0, "60 ms", below=True)
    assert (fast.met, fast.short_by) == (False, 0.2)
    assert Target.at_most("p95 < 50 ms", 50.0, 50.0, "50 ms", below=True).met is False
    assert Target.at_most("<= 50 ms", 50.0, 50.0, "50 ms").met is True
    rows = Target.at_least("rows", 3, 3, "3 of 3").unless(False, "a page failed")
    assert (rows.met, rows.shown, rows.short_by) == (False, "3 of 3 (a page failed)", None)
    assert Target.at_least("none", None, 1.0, "-").met is False
    saved = [t.as_json() for t in (fast, rows)]
    assert all(
        set(t) == {"what", "measured", "threshold", "met", "shown", "short_by", "detail"}
        for t in saved
    )
    assert "| p95 < 50 ms | 60 ms | NO, 20.0% short |" in targets_markdown(saved)
    assert "| rows | 3 of 3 (a page failed) | NO |" in targets_markdown(saved)


def test_markdown_shows_claims_per_second_and_shortfalls():
    text = markdown(report())
    assert "| intake claim_resources x100 | 64 | 56,000 | 560 |" in text
    assert "NO, 20.0% short" in text
    assert "40,000/s (56,000/s at 64 clients)" in text


def test_batch_sizes_are_checked():
    assert parse_batch_sizes("100,10,50") == (10, 50, 100)
    assert parse_batch_sizes("") == ()
    with pytest.raises(UsageError):
        parse_batch_sizes("0")
    with pytest.raises(UsageError):
        parse_batch_sizes("1001")


def test_chart_without_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"intake-cli\[bench\]"):
        bench_chart.require_matplotlib()
