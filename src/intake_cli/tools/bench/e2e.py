"""`intake bench e2e`: a herd on the whole engine, from the first claim to the last commit.

The demo's run (real `intake burst`, `intake drain` and webhook processes on
embedded durable clusters) with a webhook that approves every payment at
once, so every unit can end up committed. The clock for "all committed"
is the ledger's own: from the earliest claim to the latest commit in DB2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from intake_cli.tools import demo
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.options import json_option, output_option
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    publish,
    targets_json,
    targets_markdown,
)

TARGET_ALL_COMMITTED_S = 60.0


def summary(report: demo.DemoReport) -> dict[str, Any]:
    counts, timings = report.counts, report.timings_s
    committed_in = timings.get("all_committed_after_first_claim")
    all_committed = counts["committed"] == report.plan.units
    return {
        "machine": machine(),
        "settings": {
            "synchronous_commit": "on",
            "batch_size": demo.BATCH_SIZE,
            "drain_workers": report.plan.workers,
            "herd_connections": report.plan.herd_connections,
        },
        "buyers": report.plan.buyers,
        "units": report.plan.units,
        "seconds_to_sell_out": timings.get("first_sold_out"),
        "seconds_to_all_committed": committed_in,
        "herd_seconds": timings.get("herd"),
        "claims_per_sec": report.herd.get("claims_per_sec"),
        "claim_latency_ms": report.herd.get("latency_ms"),
        "committed": counts["committed"],
        "oversold": counts["oversold"],
        "duplicates_in_db2": counts["duplicates_in_db2"],
        "targets": targets_json(
            [
                Target.at_most(
                    f"all {report.plan.units:,} committed within "
                    f"{TARGET_ALL_COMMITTED_S:.0f} s of the first claim",
                    committed_in,
                    TARGET_ALL_COMMITTED_S,
                    f"{committed_in} s",
                )
                .unless(all_committed, f"{counts['committed']:,} committed")
                .unless(counts["oversold"] == 0, f"{counts['oversold']} oversold")
                .unless(
                    counts["duplicates_in_db2"] == 0,
                    f"{counts['duplicates_in_db2']} duplicates in DB2",
                )
            ]
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    latency = result["claim_latency_ms"] or {}
    rows = [
        ("buyers / units", f"{result['buyers']:,} / {result['units']:,}"),
        ("time to sell-out", f"{result['seconds_to_sell_out']} s"),
        ("all committed, from the first claim", f"{result['seconds_to_all_committed']} s"),
        ("herd (claims/s)", f"{result['herd_seconds']} s ({result['claims_per_sec']:,.0f}/s)"),
        ("claim latency p50 / p99", f"{latency.get('p50')} / {latency.get('p99')} ms"),
        ("committed", f"{result['committed']:,}"),
        ("oversold", str(result["oversold"])),
        ("duplicates in DB2", str(result["duplicates_in_db2"])),
    ]
    lines = ["| end to end | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", targets_markdown(result["targets"])]
    return "\n".join(lines)


def e2e_command(
    buyers: int = typer.Option(100_000, "--buyers", min=1, help="Distinct buyers."),
    units: int = typer.Option(10_000, "--units", min=1, help="Units on sale."),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="`intake drain` processes."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: 2,000 buyers on 200 units."),
    as_json: bool = json_option(),
    output: Path | None = output_option(),
) -> None:
    """A herd of BUYERS on UNITS, through claims, the webhook and the drain, into DB2.

    Reports time to sell-out, time from the first claim to the last commit
    (by DB2's clock), claim p50/p99, oversold and duplicates.
    """
    if quick:
        buyers, units = 2_000, 200
    with events.workdir("e2e") as directory:
        plan = demo.DemoPlan(
            buyers=buyers,
            units=units,
            workers=workers,
            herd_connections=64,
            decline_share=0.0,
            fail_share=0.0,
            directory=directory,
        )
        report = demo.run(plan, Console(stderr=True), live_view=False, keep=False)
    result = summary(report)
    publish(result, "e2e", output, as_json, lambda: markdown(result))
