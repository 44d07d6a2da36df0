"""`intake watch`: the live view of engine_metrics, drawn with rich.

Everything on screen comes from engine_metrics (written every 5 s by
pg_cron), the worker registry, the schedule and the webhook governors (read
live: a Retry-After or an open breaker lasts seconds); nothing here counts a
live table. Where no pg_cron job collects, watch runs the collector itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from intake_cli.engine import telemetry
from intake_cli.engine.schema import is_provisioned
from intake_cli.platform.config import Settings
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import cell
from intake_cli.platform.errors import NotProvisioned

WIDTH = 80
SPARK = "▁▂▃▄▅▆▇█"
SPARK_POINTS = 36  # three minutes at one collection per 5 s
BAR_WIDTH = 18
MAX_POOLS = 6
MAX_WORKERS = 5


@dataclass
class Snapshot:
    taken_at: datetime
    schedule: telemetry.ScheduleMode
    pools: list[dict[str, Any]]
    velocity: list[float]
    workers: list[telemetry.WorkerView] = field(default_factory=list)
    # pool id -> its webhook governor, read with the rows above.
    webhooks: dict[str, telemetry.WebhookGovernor] = field(default_factory=dict)

    def webhook(self, pool_id: str) -> dict[str, Any] | None:
        found = self.webhooks.get(pool_id)
        return found.as_json() if found is not None else None

    @property
    def age_s(self) -> float | None:
        return telemetry.newest_age_s(self.pools)

    @property
    def stale(self) -> bool:
        return self.age_s is None or self.age_s > telemetry.STALE_AFTER_S

    def engine(self, column: str) -> int:
        """A queue-wide figure (the same in every pool's row)."""
        return int(self.pools[0][column]) if self.pools else 0

    @property
    def total_velocity(self) -> float:
        return sum(float(p["processing_velocity"]) for p in self.pools)

    @property
    def eta_s(self) -> float | None:
        depth = self.engine("queue_depth")
        if depth == 0:
            return 0.0
        return depth / self.total_velocity if self.total_velocity > 0 else None

    @property
    def webhook_error_rate(self) -> float | None:
        rates = [p["webhook_error_rate"] for p in self.pools if p["webhook_error_rate"] is not None]
        return max(rates) if rates else None

    def as_json(self) -> dict[str, Any]:
        keep = (
            "pool_id",
            "inventory",
            "available_slots",
            "locked",
            "consumed",
            "rejected",
            "retried",
            "dead_lettered",
            "paused",
            "recovering",
            "processing_velocity",
            "webhook_error_rate",
        )
        return {
            "taken_at": self.taken_at.isoformat(),
            "schedule": self.schedule.as_json(),
            "metrics_age_s": None if self.age_s is None else round(self.age_s, 1),
            "stale": self.stale,
            "queue_depth": self.engine("queue_depth"),
            "in_flight": self.engine("in_flight"),
            "oldest_msg_age_s": self.pools[0]["oldest_msg_age_s"] if self.pools else None,
            "dlq_depth": self.engine("dlq_depth"),
            "velocity": round(self.total_velocity, 1),
            "velocity_history": [round(v, 1) for v in self.velocity],
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "pools": [
                {**{k: p[k] for k in keep}, "webhook": self.webhook(p["pool_id"])}
                for p in self.pools
            ],
            "workers": [w.as_json() for w in self.workers],
        }


def read(conn: psycopg.Connection, *, fresh: bool = False, fill_gaps: bool = False) -> Snapshot:
    """The newest figures; where nothing is scheduled, collected here first.

    `fresh` (a one-shot frame) collects whenever watch is the collector; the
    live view keeps the 5 s cadence so velocities stay comparable.
    `fill_gaps` also collects when pg_cron's rows are late (the demo, whose
    event is younger than pg_cron 1.4's first minute job).
    """
    schedule = telemetry.schedule_mode(conn)
    pools = telemetry.latest(conn)
    age = telemetry.newest_age_s(pools)
    due = age is None or age >= telemetry.INTERVAL_S
    if (schedule.mode == "none" and (fresh or due)) or (fill_gaps and due):
        telemetry.collect(conn)
        pools = telemetry.latest(conn)
    return Snapshot(
        taken_at=datetime.now(UTC),
        schedule=schedule,
        pools=pools,
        velocity=telemetry.velocity_history(
            conn, SPARK_POINTS * telemetry.INTERVAL_S + telemetry.INTERVAL_S
        ),
        workers=telemetry.workers(conn),
        webhooks=telemetry.webhook_governors(conn),
    )


# -- drawing ----------------------------------------------------------------------


def sparkline(values: list[float], points: int = SPARK_POINTS) -> str:
    values = values[-points:]
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(
        SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values
    )


def unit_bar(pool: dict[str, Any], width: int = BAR_WIDTH) -> Text:
    """Consumed, locked and available units as shares of the pool's inventory."""
    inventory = max(int(pool["inventory"]), 1)
    consumed = round(width * int(pool["consumed"]) / inventory)
    locked = min(round(width * int(pool["locked"]) / inventory), width - consumed)
    bar = Text()
    bar.append("█" * consumed, style="green")
    bar.append("█" * locked, style="yellow")
    bar.append("░" * (width - consumed - locked), style="grey50")
    return bar


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def _header(snap: Snapshot) -> Text:
    text = Text()
    text.append("intake watch", style="bold")
    text.append(f"  {snap.taken_at:%H:%M:%S} UTC  ")
    age = snap.age_s
    if age is None:
        text.append("no metrics yet", style="bold red")
    elif snap.stale:
        text.append(f"STALE: metrics {age:.0f} s old", style="bold red")
    else:
        text.append(f"metrics {age:.0f} s old", style="green")
    mode = {"seconds": "pg_cron 5 s", "minute-loop": "pg_cron minute loop", "none": "by watch"}
    text.append(f"  ({mode[snap.schedule.mode]})", style="grey50")
    return text


def _pools_table(snap: Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), expand=False)
    table.add_column("pool", no_wrap=True, max_width=14)
    for column in ("avail", "locked", "consumed", "rejected", "dead"):
        table.add_column(column, justify="right")
    table.add_column("consumed|locked|available", no_wrap=True)
    for pool in snap.pools[:MAX_POOLS]:
        name = cell(pool["pool_id"])
        if pool["paused"]:
            name.append(" ⏸", style="yellow")
        if pool.get("recovering"):
            # A DB1 crash emptied the inventory; the figures are being rebuilt.
            name.append(" RECOVERING", style="bold red")
        table.add_row(
            name,
            f"{pool['available_slots']:,}",
            f"{pool['locked']:,}",
            f"{pool['consumed']:,}",
            f"{pool['rejected']:,}",
            f"{pool['dead_lettered']:,}",
            unit_bar(pool),
        )
    if len(snap.pools) > MAX_POOLS:
        table.add_row(f"+{len(snap.pools) - MAX_POOLS} more", *[""] * 6)
    return table


def _queue_lines(snap: Snapshot) -> Group:
    queue = Text()
    queue.append(f"queue {snap.engine('queue_depth'):,}", style="bold")
    queue.append(f"  in flight {snap.engine('in_flight'):,}")
    oldest = snap.pools[0]["oldest_msg_age_s"] if snap.pools else None
    queue.append(f"  oldest {_duration(oldest) if oldest is not None else '—'}")
    dlq = snap.engine("dlq_depth")
    queue.append(f"  DLQ {dlq:,}", style="bold red" if dlq else "")
    rate = snap.webhook_error_rate
    queue.append(f"  webhook errors {'—' if rate is None else f'{rate:.1%}'}")
    velocity = Text()
    velocity.append(f"velocity {snap.total_velocity:,.0f}/s ", style="bold")
    velocity.append(sparkline(snap.velocity), style="cyan")
    eta = snap.eta_s
    velocity.append("  drained" if eta == 0 else f"  ETA {_duration(eta)}")
    return Group(queue, velocity)


def _rate(rate: float | None) -> str:
    if rate is None:
        return "no limit"
    if rate == 0:
        return "0/s"
    return f"{rate:,.1f}/s" if rate < 10 else f"{rate:,.0f}/s"


def webhook_line(pool_id: str, webhook: dict[str, Any]) -> Text:
    """One pool's webhook governor in a line: the rate in force, the share of 429s,
    a Retry-After still in force, and the breaker (open stands out).

    Takes the governor's JSON (`status --json` and `watch --json` print the
    same), so the status command can show the same line.
    """
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("webhook ", style="bold")
    line.append_text(cell(pool_id))
    line.append(f": {_rate(webhook['governed_rate'])}")
    share = webhook["throttled_share"]
    line.append("  429s ")
    line.append("—" if share is None else f"{share:.1%}", style="yellow" if share else "")
    if webhook["retry_after_until"] is not None:
        # Rounded up: a pause of 0.4 s still holds every call back.
        left = math.ceil(webhook["retry_after_s"])
        line.append(f"  Retry-After {_duration(left)}", style="bold yellow")
    if webhook["breaker"] == "open":
        line.append("  breaker OPEN", style="bold red")
        if webhook["probe_in_s"] is not None:
            probe = math.ceil(webhook["probe_in_s"])
            line.append(f", probe in {_duration(probe)}", style="red")
    else:
        line.append("  breaker closed", style="grey50")
    return line


def _webhook_lines(snap: Snapshot) -> Group:
    return Group(
        *(
            webhook_line(pool["pool_id"], found)
            for pool in snap.pools[:MAX_POOLS]
            if (found := snap.webhook(pool["pool_id"])) is not None
        )
    )


def _workers_table(snap: Snapshot) -> RenderableType:
    if not snap.workers:
        return Text("workers: none registered (start `intake drain`)", style="yellow")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("worker", no_wrap=True, max_width=26)
    table.add_column("pool", max_width=10)
    for column in ("beat", "batches", "committed", "logs lost"):
        table.add_column(column, justify="right")
    table.add_column("state")
    styles = {"alive": "green", "silent": "bold red", "stopped": "grey50"}
    for worker in snap.workers[:MAX_WORKERS]:
        table.add_row(
            # From DB1, not from us: shown literally.
            cell(f"{worker.hostname}:{worker.pid}"),
            cell(worker.pool_filter or "all"),
            f"{worker.heartbeat_age_s:.0f} s",
            f"{worker.batches:,}",
            f"{worker.committed:,}",
            f"{worker.log_lines_dropped:,}",
            Text(worker.state, style=styles[worker.state]),
        )
    if len(snap.workers) > MAX_WORKERS:
        table.add_row(f"+{len(snap.workers) - MAX_WORKERS} more", *[""] * 6)
    return table


def frame(snap: Snapshot) -> RenderableType:
    return Group(
        _header(snap),
        _pools_table(snap),
        _queue_lines(snap),
        _webhook_lines(snap),
        _workers_table(snap),
    )


# -- running ----------------------------------------------------------------------


@contextmanager
def _provisioned_db1(settings: Settings) -> Iterator[psycopg.Connection]:
    with connect(endpoints(settings).db1, "DB1") as conn:
        if not is_provisioned(conn):
            raise NotProvisioned()
        yield conn


def snapshot(settings: Settings) -> Snapshot:
    with _provisioned_db1(settings) as conn:
        return read(conn, fresh=True)


def print_once(snap: Snapshot, console: Console | None = None) -> None:
    (console or Console(width=WIDTH)).print(frame(snap))


def live(settings: Settings, refresh_s: float) -> None:
    """Redraw every `refresh_s` until Ctrl-C."""
    with (
        _provisioned_db1(settings) as conn,
        Live(frame(read(conn)), auto_refresh=False, screen=False) as view,
    ):
        try:
            while True:
                time.sleep(refresh_s)
                view.update(frame(read(conn)), refresh=True)
        except KeyboardInterrupt:
            pass
