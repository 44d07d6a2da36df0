"""`intake bench claims --standby`: what a synchronous standby costs the claim path.

After every other run, the bench's DB1 gets the standby `intake up` gives it
with `embedded.standby` (`platform.standby.start_standby`: a restart for
replica WAL, `pg_basebackup`, commits that wait for the standby's flush), on
the same machine, and the single claim and each batched claim run again at
every client count. Each is reported as claims/s with the standby over
claims/s without it (the run of the same workload and clients earlier in
the same run), beside the verdict of `replication_state` read just after it.

The standby runs go last rather than interleaved with the others: DB1 takes
its standby with a restart and a base backup, and gives it back only with
another restart (replica WAL stays until then), so interleaving would
restart DB1 around every pair and time cold caches instead. "Without" is
therefore what DB1 runs without a standby (minimal WAL), so the ratio is the
whole price of turning the standby on. The standby shares the machine's
cores with DB1 and pgbench, as it would on a one-host event.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from intake_cli.platform.embedded import STANDBY, EmbeddedClusters
from intake_cli.platform.errors import IntakeError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.standby import remove_standby, replication_state, start_standby
from intake_cli.tools.bench.common.results import say

if TYPE_CHECKING:
    from intake_cli.tools.bench.claims import Plan, Report
    from intake_cli.tools.bench.common.pgbench import Bench, Workload

# Issue 22: batched claims at the bar's client count keep this share of
# their rate with a synchronous standby.
TARGET_WITH_VS_WITHOUT = 0.85


@dataclass(frozen=True)
class StandbyRun:
    workload: str
    clients: int
    without_per_s: float
    with_per_s: float
    # with ÷ without
    ratio: float
    # replication_state's verdict just after the run: "synchronous" or the
    # figure does not measure a synchronous standby.
    verdict: str


@contextmanager
def synchronous_standby(bench: Bench) -> Iterator[None]:
    """Give the bench's DB1 its synchronous standby; remove it afterwards, even on
    failure. bench.conn is a new connection meanwhile (the restart ends the old)."""
    clusters = bench.clusters
    if clusters is None:
        raise IntakeError("--standby: the bench's DB1 is not an embedded cluster")
    old = bench.conn
    try:
        # Nothing left to copy but the schema: the base backup stays small.
        bench.reset(None, 0)
        start_standby(clusters)
        with open_sync(bench.cluster.dsn) as conn:
            bench.conn = conn
            yield
    finally:
        bench.conn = old
        _keep_log(clusters, bench.workdir)
        remove_standby(clusters)


def _keep_log(clusters: EmbeddedClusters, workdir: Path) -> None:
    standby = clusters.load().get(STANDBY)
    if standby is not None and Path(standby.logfile).exists():
        shutil.copy(standby.logfile, workdir / f"{STANDBY}.log")


def measure(
    bench: Bench, plan: Plan, report: Report, workloads: Sequence[Workload]
) -> list[StandbyRun]:
    """Run `workloads` at the plan's client counts again, with the standby."""
    found: list[StandbyRun] = []
    say("[standby] giving DB1 a synchronous standby (restart, base backup)")
    with synchronous_standby(bench):
        for clients in plan.clients:
            for workload in workloads:
                say(f"[standby] {workload.title}, {clients} clients, {plan.duration} s")
                bench.reset(workload.sale, plan.inventory)
                run = bench.run(workload, clients, plan.duration)
                verdict = replication_state(bench.conn).verdict
                without = report.claims_per_s(workload.key, clients) or 0.0
                ratio = run.claims_per_s / without if without else 0.0
                say(f"    {run.claims_per_s:,.0f} claims/s, {ratio:.1%} of without, {verdict}")
                found.append(
                    StandbyRun(
                        workload.key, clients, without, run.claims_per_s, round(ratio, 4), verdict
                    )
                )
    return found


def judged(runs: Sequence[StandbyRun], clients: int) -> StandbyRun | None:
    """The run the target is judged on: the largest batch (else the single
    claim) at the bar's client count."""
    at = [r for r in runs if r.clients == clients]
    batches = [r for r in at if r.workload.startswith("claim_batch_")]
    if batches:
        return max(batches, key=lambda r: int(r.workload.rsplit("_", 1)[1]))
    return at[0] if at else None


def markdown(runs: Sequence[StandbyRun], titles: dict[str, str]) -> list[str]:
    lines = [
        "",
        "With a synchronous streaming standby on this machine (replica WAL; every commit "
        "waits for the standby's flush), against the same workload without one; target: "
        f"the largest batch at the bar's client count keeps >= {TARGET_WITH_VS_WITHOUT:.0%}:",
        "",
        "| workload | clients | claims/s without | claims/s with | with ÷ without | replication |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {titles[r.workload]} | {r.clients} | {r.without_per_s:,.0f} | {r.with_per_s:,.0f} "
        f"| {r.ratio:.1%} | {r.verdict} |"
        for r in runs
    ]
    return lines
