"""`intake demo`: the whole engine under a herd, on the embedded default.

Provision a pool, start the test payment webhook (declining a few percent,
failing a few percent of first calls), start drain workers, let a herd of
distinct buyers claim concurrently, show the live view while it drains, and
end with a report whose invariants decide the exit code: nothing oversold,
no duplicate in the ledger, every claim accounted for.

Every piece is a real process: the herd is `intake burst`, the workers are
`intake drain`, the webhook is `intake webhook-server`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from intake_cli.engine import lifecycle, queue, telemetry
from intake_cli.faces import watch
from intake_cli.platform import config
from intake_cli.platform.db import endpoints
from intake_cli.platform.display import safe
from intake_cli.platform.errors import UsageError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.webhook_process import WebhookServer

POOL = "demo"
INTAKE = [sys.executable, "-m", "intake_cli"]
BATCH_SIZE = 250
DRAIN_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoPlan:
    buyers: int
    units: int
    workers: int
    herd_connections: int
    decline_share: float
    fail_share: float
    directory: Path


@dataclass
class DemoReport:
    plan: DemoPlan
    timings_s: dict[str, float | None] = field(default_factory=dict)
    herd: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accounted(self) -> bool:
        c = self.counts
        return c["committed"] + c["rejected"] + c["dead_lettered"] == c["claimed"]

    @property
    def ok(self) -> bool:
        c = self.counts
        return (
            c["oversold"] == 0
            and c["duplicates_in_db2"] == 0
            and c["queue_depth"] == 0
            and self.accounted
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "buyers": self.plan.buyers,
            "units": self.plan.units,
            "workers": self.plan.workers,
            "decline_share": self.plan.decline_share,
            "fail_share": self.plan.fail_share,
            "counts": self.counts,
            "accounted": self.accounted,
            "ok": self.ok,
            "timings_s": self.timings_s,
            "claim_latency_ms": self.herd.get("latency_ms"),
            "claims_per_sec": self.herd.get("claims_per_sec"),
            "drain_workers": self.workers,
        }


# The first line of every intake.yaml a demo writes. Any other intake.yaml in
# --dir is someone's event: the demo neither tears it down nor overwrites it.
DEMO_HEADER = "# written by `intake demo`; the next demo in this directory tears it down\n"


def _write_config(plan: DemoPlan, webhook_url: str) -> Path:
    plan.directory.mkdir(parents=True, exist_ok=True)
    # The embedded servers run as an unprivileged user who must reach it.
    plan.directory.chmod(0o755)
    path = plan.directory / "intake.yaml"
    path.write_text(
        DEMO_HEADER
        + yaml.safe_dump(
            {
                "state_dir": ".intake",
                "pools": [
                    {
                        "pool_id": POOL,
                        "inventory": plan.units,
                        "batch_size": BATCH_SIZE,
                        "visibility_timeout": 30,
                        "validation_webhook_url": webhook_url,
                        "max_retries": 8,
                        "retry_base_seconds": 0.2,
                        "retry_max_seconds": 2,
                    }
                ],
            },
            sort_keys=False,
        )
    )
    return path


def _spawn(argv: list[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    # Output to files: a pipe nobody reads while the process runs would fill
    # up and stall it.
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def _q(name: str) -> str:
    return queries("demo")[name]


def _queue_depth(conn: psycopg.Connection, name: str) -> int:
    return queue.metrics(conn, name).queue_length


@dataclass(frozen=True)
class LedgerCheck:
    committed: int
    sold_twice: int
    duplicates: int
    # From the first claim to the last commit, by the ledger's own clocks.
    commit_span_s: float | None


def _check_ledger(db2: str) -> LedgerCheck:
    with open_sync(db2, autocommit=False) as conn:
        committed, keys, units, span = conn.execute(
            _q("ledger_tickets"), {"pool_id": POOL}
        ).fetchone()  # type: ignore[misc]
        orders, refs = conn.execute(_q("ledger_orders")).fetchone()  # type: ignore[misc]
    return LedgerCheck(
        committed=committed,
        sold_twice=committed - units,
        duplicates=(committed - keys) + (orders - refs),
        commit_span_s=None if span is None else round(float(span), 2),
    )


def _status_line(phase: str, started: float, snap: watch.Snapshot | None) -> Text:
    line = Text()
    line.append(f"demo: {phase}", style="bold magenta")
    line.append(f"  {time.monotonic() - started:5.1f} s")
    if snap and snap.pools:
        pool = snap.pools[0]
        line.append(
            f"  consumed {pool['consumed']:,}  locked {pool['locked']:,}"
            f"  queue {snap.engine('queue_depth'):,}"
        )
    return line


def _clear_previous(plan: DemoPlan) -> None:
    """A demo left up by --keep (or stopped half-way) is torn down first."""
    previous = plan.directory / "intake.yaml"
    if previous.exists():
        if not previous.read_text(errors="replace").startswith(DEMO_HEADER):
            raise UsageError(
                f"--dir {plan.directory} holds an intake.yaml the demo did not write: the demo "
                "would overwrite it and tear its event down. Choose another directory (or "
                "tear that event down yourself first: `intake -c … down`)"
            )
        lifecycle.down(config.load(str(previous)), force=True)


def run(plan: DemoPlan, console: Console, live_view: bool, keep: bool) -> DemoReport:
    report = DemoReport(plan)
    begun = time.monotonic()
    _clear_previous(plan)
    with WebhookServer(decline_share=plan.decline_share, fail_share=plan.fail_share) as hook:
        path = _write_config(plan, hook.url)
        settings = config.load(str(path))
        console.print(f"demo: provisioning {plan.units:,} units (embedded clusters)…")
        t = time.monotonic()
        lifecycle.up(settings)
        report.timings_s["up"] = round(time.monotonic() - t, 2)
        where = endpoints(settings)
        logs = plan.directory / "logs"
        logs.mkdir(exist_ok=True)
        base = [*INTAKE, "-c", str(path)]
        workers = [
            _spawn(
                [*base, "drain", "--concurrency", "4", "--log-format", "json", "--json"],
                logs / f"drain-{n}.json",
                logs / f"drain-{n}.log",
            )
            for n in range(plan.workers)
        ]
        herd_started = time.monotonic()
        herd = _spawn(
            [
                *base, "burst", POOL,
                "--users", str(plan.buyers),
                "--concurrency", str(plan.herd_connections),
                "--json",
            ],
            logs / "herd.json",
            logs / "herd.log",
        )  # fmt: skip
        herd_done = _follow(plan, settings, where.db1, herd, herd_started, console, live_view)
        report.timings_s["herd"] = round(herd_done - herd_started, 2)
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for n, proc in enumerate(workers):
            proc.wait(STOP_TIMEOUT_S)
            text = (logs / f"drain-{n}.json").read_text().strip()
            report.workers.append(json.loads(text) if text else {"exit_code": proc.returncode})
        if herd.returncode != 0:
            said = safe((logs / "herd.log").read_text()[-2000:], lines=True)
            raise RuntimeError(f"the herd failed: {said}")
        report.herd = json.loads((logs / "herd.json").read_text())
        report.timings_s["first_sold_out"] = report.herd.get("first_sold_out_s")
        webhook_calls = hook.calls()
        with open_sync(where.db1, autocommit=False) as conn:
            rejected = conn.execute(_q("rejected_intents")).fetchone()[0]  # type: ignore[index]
            depth = _queue_depth(conn, settings.queue_name)
            dead = _queue_depth(conn, settings.dlq_name)
        ledger = _check_ledger(where.db2)
        report.timings_s["all_committed_after_first_claim"] = ledger.commit_span_s
        report.counts = {
            "buyers": plan.buyers,
            "claimed": int(report.herd["outcomes"].get("claimed", 0)),
            "sold_out_answers": int(report.herd["outcomes"].get("sold_out", 0)),
            "committed": ledger.committed,
            "rejected": int(rejected),
            "dead_lettered": dead,
            "queue_depth": depth,
            "oversold": max(0, ledger.committed - plan.units) + ledger.sold_twice,
            "duplicates_in_db2": ledger.duplicates,
            "webhook_calls": int(webhook_calls["total"]),
            "webhook_transient_failures": sum(
                1 for c in webhook_calls["calls"] if c["status"] >= 500
            ),
        }
        if not keep:
            t = time.monotonic()
            lifecycle.down(settings, force=True)
            report.timings_s["down"] = round(time.monotonic() - t, 2)
    report.timings_s["total"] = round(time.monotonic() - begun, 2)
    return report


def _follow(
    plan: DemoPlan,
    settings: config.Settings,
    db1: str,
    herd: subprocess.Popen[bytes],
    herd_started: float,
    console: Console,
    live_view: bool,
) -> float:
    """Show the engine until the herd is done and the queue is empty.

    Returns when the herd finished.
    """
    herd_done: float | None = None
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    with open_sync(db1) as conn:
        view = Live(console=console, auto_refresh=False) if live_view else None
        last_line = 0.0
        if view:
            view.start()
        try:
            while time.monotonic() < deadline:
                if herd_done is None and herd.poll() is not None:
                    herd_done = time.monotonic()
                drained = herd_done is not None and _queue_depth(conn, settings.queue_name) == 0
                phase = "herd claiming" if herd_done is None else "draining"
                if drained:
                    # The last frame shows the end state, not the last 5 s tick.
                    phase = "drained"
                    telemetry.collect(conn)
                snap = watch.read(conn, fill_gaps=True)
                if view:
                    view.update(
                        Group(_status_line(phase, herd_started, snap), watch.frame(snap)),
                        refresh=True,
                    )
                elif time.monotonic() - last_line >= 5 or drained:
                    console.print(_status_line(phase, herd_started, snap))
                    last_line = time.monotonic()
                if drained:
                    assert herd_done is not None
                    return herd_done
                time.sleep(0.5)
        finally:
            if view:
                view.stop()
    if herd.poll() is None:
        herd.kill()
    return herd_done or time.monotonic()


def render_report(report: DemoReport, console: Console) -> None:
    c, t = report.counts, report.timings_s
    table = Table(title="demo report", show_header=False, box=None, padding=(0, 2))
    table.add_column(justify="left")
    table.add_column(justify="right")
    latency = report.herd.get("latency_ms") or {}

    def verdict(value: int) -> Text:
        return Text(f"{value:,}", style="bold green" if value == 0 else "bold red")

    def seconds(key: str) -> str:
        value = t.get(key)
        return "—" if value is None else f"{value:.1f} s"

    rows: list[tuple[str, Any]] = [
        ("buyers", f"{c['buyers']:,}"),
        ("claimed", f"{c['claimed']:,}"),
        ("committed in DB2", f"{c['committed']:,}"),
        ("rejected (card declined)", f"{c['rejected']:,}"),
        ("dead-lettered", f"{c['dead_lettered']:,}"),
        ("still queued", f"{c['queue_depth']:,}"),
        ("webhook calls (transient failures)",
         f"{c['webhook_calls']:,} ({c['webhook_transient_failures']:,})"),
        ("oversold", verdict(c["oversold"])),
        ("duplicates in DB2", verdict(c["duplicates_in_db2"])),
        ("every claim accounted for", Text("yes" if report.accounted else "NO",
                                           style="bold green" if report.accounted else "bold red")),
        ("up", seconds("up")),
        ("herd (claims/s)", f"{seconds('herd')} ({report.herd.get('claims_per_sec', 0):,.0f}/s)"),
        ("time to sell-out", seconds("first_sold_out")),
        ("all committed, from the first claim", seconds("all_committed_after_first_claim")),
        ("claim latency p50 / p99",
         f"{latency.get('p50', 0):.1f} / {latency.get('p99', 0):.1f} ms"),
        ("total", seconds("total")),
    ]  # fmt: skip
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)


def default_directory() -> Path:
    return Path(os.environ.get("INTAKE_DEMO_DIR", ".intake-demo")).resolve()
