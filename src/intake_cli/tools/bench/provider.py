"""`intake bench provider`: the drain against a payment provider that meters its callers.

The specification promises the provider "a polite, metered stream" (issue
26): a provider that answers 429 beyond L calls a second should see about L
calls a second, each sale asked for about once, and an outage should cost
time, never sales. Each scenario drains a fresh event of N units with real
`intake drain` processes against the test webhook (`intake webhook-server`
in a subprocess) limited to L calls/s:

- `retry-after`: 429 with Retry-After in seconds beyond L a second;
- `no-retry-after`: the same 429s without the header;
- `outage`: as `retry-after`, and a few seconds into the drain the provider
  answers every call 503 for OUTAGE seconds (switched on and off through
  its control API); the pool allows 2 retries, so an outage charged to the
  intents shows up as dead letters;
- `unlimited`: no limit at all, the same-run baseline the governor must not
  slow down.

The clock is DB2's: from the first claim queued (the tickets' earliest
`claimed_at`) to the last commit (their latest `committed_at`). The workers
are started, and registered in DB1, before the first claim, so their start
is not timed. The ideal is what the provider allows: N / L seconds, plus the
outage where there is one.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import typer

from intake_cli.engine import claims, lifecycle, telemetry
from intake_cli.platform import config
from intake_cli.platform.embedded import Cluster
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.bench.common import events
from intake_cli.tools.bench.common.events import POOL
from intake_cli.tools.bench.common.options import json_option, output_option
from intake_cli.tools.bench.common.results import (
    Target,
    machine,
    publish,
    say,
    targets_json,
    targets_markdown,
    times,
)
from intake_cli.tools.webhook_process import WebhookServer

SCENARIOS = ("retry-after", "no-retry-after", "outage", "unlimited")
# How the provider is down: it answers, with the status a provider gives for
# "temporarily unavailable" (the webhook's `drop` and `hang` are other tests).
OUTAGE_MODE = "503"
# The outage begins this far into the drain (or a quarter of the ideal, if
# sooner), so that the governor has learned the rate before it.
OUTAGE_BEGINS_S = 5.0
# Retries the outage scenario's pool allows: an outage charged to the intents
# dead-letters them.
OUTAGE_MAX_RETRIES = 2
# (within this many times the ideal, at most this many webhook calls per sale)
BARS = {"retry-after": (1.1, 1.05), "no-retry-after": (1.25, 1.3)}
# Batches in flight per `intake drain` process (its own default).
DRAIN_CONCURRENCY = 4
# A scenario gives up after GIVE_UP_TIMES its ideal plus the slack, and
# reports a miss rather than hang the run; --quick's slack is smaller.
GIVE_UP_TIMES = 5.0
GIVE_UP_SLACK_S = 60.0
QUICK_GIVE_UP_SLACK_S = 20.0
POLL_S = 0.2
QUICK_UNITS, QUICK_LIMIT, QUICK_OUTAGE_S = 600, 100, 3.0


@dataclass(frozen=True)
class Scenario:
    name: str
    rate_limit: int  # calls a second the provider accepts; 0: no limit
    retry_after: str  # how its 429s say when to come back: "seconds" | "none"
    outage_s: float  # how long it is down during the drain; 0: never
    max_retries: int | None  # the pool's; None: intake's default

    @property
    def provider(self) -> str:
        """The provider's behaviour, as a person reads it."""
        if not self.rate_limit:
            return "no limit"
        header = "Retry-After: seconds" if self.retry_after == "seconds" else "no Retry-After"
        shown = f"{self.rate_limit:,}/s, 429 with {header}"
        if self.outage_s:
            shown += f", {OUTAGE_MODE} for {self.outage_s:g} s"
        return shown

    def ideal_s(self, units: int) -> float | None:
        """What the provider allows: units at its rate, plus the outage; None without a limit."""
        return units / self.rate_limit + self.outage_s if self.rate_limit else None


def scenario(name: str, limit: int, outage_s: float) -> Scenario:
    if name == "retry-after":
        return Scenario(name, limit, "seconds", 0.0, None)
    if name == "no-retry-after":
        return Scenario(name, limit, "none", 0.0, None)
    if name == "outage":
        return Scenario(name, limit, "seconds", outage_s, OUTAGE_MAX_RETRIES)
    return Scenario(name, 0, "seconds", 0.0, None)


def parse_scenarios(text: str) -> tuple[str, ...]:
    """A comma list of scenario names, in SCENARIOS' order whatever order it was given in."""
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(SCENARIOS))
    if unknown or not asked:
        raise UsageError(
            f"--scenarios: expected some of {', '.join(SCENARIOS)} separated by commas, "
            f"got {text!r}"
        )
    return tuple(name for name in SCENARIOS if name in asked)


@dataclass(frozen=True)
class Plan:
    units: int
    workers: int
    limit: int
    outage_s: float
    give_up_slack_s: float

    def give_up_s(self, scenario: Scenario) -> float:
        # The unlimited scenario is bounded as if limited: it has no ideal of its own.
        ideal = scenario.ideal_s(self.units) or self.units / self.limit
        return GIVE_UP_TIMES * ideal + self.give_up_slack_s

    def outage_begins_s(self) -> float:
        return min(OUTAGE_BEGINS_S, self.units / self.limit / 4)


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    units: int
    pool: dict[str, Any]
    gave_up_after_s: float | None  # None: every intent ended in time
    span_s: float | None  # first claim queued to last commit, by DB2's tickets
    committed: int  # tickets in DB2
    duplicates: int  # tickets beyond one per idempotency key
    rejected: int
    dead_letters: int
    webhook_calls: int  # the webhook's own count
    by_status: dict[str, int]
    outage: dict[str, float] | None  # when it began and how long it lasted, if it did
    governor: dict[str, Any] | None
    # The governor's lessons as they happened: where a run lost its time.
    lessons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_committed(self) -> bool:
        return self.committed == self.units and not self.duplicates

    @property
    def drained_s(self) -> float | None:
        """Seconds to drain every unit into DB2; None when some never got there (dead
        letters, declines) or the scenario gave up first."""
        return self.span_s if self.all_committed and self.gave_up_after_s is None else None

    @property
    def ideal_s(self) -> float | None:
        return self.scenario.ideal_s(self.units)

    @property
    def ratio_to_ideal(self) -> float | None:
        if self.drained_s is None or self.ideal_s is None:
            return None
        return self.drained_s / self.ideal_s

    @property
    def throttled(self) -> int:
        return self.by_status.get("429", 0)

    @property
    def calls_per_sale(self) -> float | None:
        return self.webhook_calls / self.committed if self.committed else None

    @property
    def claims_per_sec(self) -> float | None:
        """Units drained a second, once all of them were."""
        return self.units / self.drained_s if self.drained_s else None

    @property
    def drained_shown(self) -> str:
        if self.gave_up_after_s is not None:
            return f"gave up after {self.gave_up_after_s:.0f} s"
        return "not all committed" if self.drained_s is None else f"{self.drained_s:.1f} s"

    def as_json(self) -> dict[str, Any]:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        s = self.scenario
        return {
            "scenario": s.name,
            "provider": {
                "shown": s.provider,
                "rate_limit_per_sec": s.rate_limit,
                "retry_after": s.retry_after if s.rate_limit else None,
                "outage_s": s.outage_s or None,
                "outage_mode": OUTAGE_MODE if s.outage_s else None,
            },
            "pool": self.pool,
            "units": self.units,
            "drained_s": rounded(self.drained_s, 2),
            # The same clock whether or not every unit got there.
            "first_claim_to_last_commit_s": rounded(self.span_s, 2),
            "ideal_s": rounded(self.ideal_s, 2),
            "ratio_to_ideal": rounded(self.ratio_to_ideal, 3),
            "claims_per_sec": rounded(self.claims_per_sec, 1),
            "webhook_calls": self.webhook_calls,
            "calls_429": self.throttled,
            "calls_by_status": self.by_status,
            "calls_per_sale": rounded(self.calls_per_sale, 3),
            "committed": self.committed,
            "duplicates_in_db2": self.duplicates,
            "rejected": self.rejected,
            "dead_letters": self.dead_letters,
            "gave_up_after_s": rounded(self.gave_up_after_s, 1),
            "outage": self.outage,
            "governor": self.governor,
            "lessons": self.lessons,
        }


@contextmanager
def drain_workers(path: Path, count: int, logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` `intake drain` processes, each logging to a file under `logs`; stopped after."""
    logs.mkdir(parents=True, exist_ok=True)
    argv = events.intake_argv(
        path, "drain", "--log-level", "warning", "--concurrency", str(DRAIN_CONCURRENCY)
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            with (logs / f"worker-{n}.log").open("wb") as log:
                workers.append(subprocess.Popen(argv, stdout=log, stderr=log))
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=events.STOP_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _exited(workers: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """Raise, with the end of its log, if a worker has stopped on its own."""
    for n, worker in enumerate(workers):
        if worker.poll() is not None:
            tail = (logs / f"worker-{n}.log").read_text(errors="replace").strip().splitlines()
            raise IntakeError(
                f"drain worker {n} exited with code {worker.returncode}: " + " | ".join(tail[-3:])
            )


def wait_registered(
    conn: psycopg.Connection, workers: list[subprocess.Popen[bytes]], logs: Path
) -> None:
    """Until every worker has registered in DB1: from then on it is reading the queue."""
    pids = {worker.pid for worker in workers}
    deadline = time.monotonic() + events.START_S
    while not pids <= {w.pid for w in telemetry.workers(conn) if not w.stopped}:
        _exited(workers, logs)
        if time.monotonic() > deadline:
            raise IntakeError(f"the drain workers did not start in {events.START_S:.0f} s")
        time.sleep(0.1)


def claim_every_unit(conn: psycopg.Connection, units: int) -> None:
    """One claim per unit, each by its own buyer, in the batched claim's largest batches."""
    for first in range(0, units, claims.MAX_BATCH):
        last = min(units, first + claims.MAX_BATCH)
        claims.claim_batch(conn, POOL, [f"buyer-{n}" for n in range(first, last)])


def pool_figures(conn: psycopg.Connection) -> dict[str, Any]:
    """The pool's running totals now (committed, rejected, dead-lettered, …)."""
    return next(row for row in telemetry.pool_metrics(conn) if row["pool_id"] == POOL)


def webhook_counts(hook: WebhookServer) -> tuple[int, dict[str, int]]:
    """Every call the webhook has received, and how many got each status."""
    response = httpx.get(f"{hook.base_url}/_control/calls", params={"limit": 0}, timeout=30)
    response.raise_for_status()
    counts = response.json()
    return int(counts["total"]), {k: int(v) for k, v in counts["by_status"].items() if v}


def run_scenario(
    workdir: Path, clusters: dict[str, Cluster], scenario: Scenario, plan: Plan
) -> Outcome:
    tag = scenario.name.replace("-", "_")
    db1 = events.fresh_database(clusters["db1"], f"provider_{tag}_db1")
    db2 = events.fresh_database(clusters["db2"], f"provider_{tag}_db2")
    logs = workdir / scenario.name
    say(f"{scenario.name}: {plan.units:,} units, provider {scenario.provider}")
    with WebhookServer(rate_limit=scenario.rate_limit, retry_after=scenario.retry_after) as hook:
        pool: dict[str, Any] = {"inventory": plan.units, "validation_webhook_url": hook.url}
        if scenario.max_retries is not None:
            pool["max_retries"] = scenario.max_retries
        path = events.write_config(workdir / f"{scenario.name}.yaml", db1, db2, pool)
        settings = config.load(path)
        lifecycle.up(settings)
        (loaded,) = settings.pools
        with open_sync(db1) as conn, drain_workers(path, plan.workers, logs) as workers:
            wait_registered(conn, workers, logs)
            started = time.perf_counter()
            claim_every_unit(conn, plan.units)
            lessons: list[dict[str, Any]] = []
            gave_up, outage = follow(conn, hook, workers, logs, scenario, plan, started, lessons)
            figures = pool_figures(conn)
            governors = telemetry.webhook_governors(conn)
        calls, by_status = webhook_counts(hook)
    with open_sync(db2) as conn:
        row = conn.execute(queries("demo")["ledger_tickets"], {"pool_id": POOL}).fetchone()
    committed, keys, _, span = row if row else (0, 0, 0, None)
    return Outcome(
        scenario=scenario,
        units=plan.units,
        pool={
            "batch_size": loaded.batch_size,
            "max_retries": loaded.max_retries,
            "retry_base_seconds": loaded.retry_base_seconds,
            "retry_max_seconds": loaded.retry_max_seconds,
            "visibility_timeout": loaded.visibility_timeout,
            "webhook_rate_per_sec": loaded.webhook_rate_per_sec,
        },
        gave_up_after_s=gave_up,
        span_s=float(span) if span is not None else None,
        committed=int(committed),
        duplicates=int(committed) - int(keys),
        rejected=int(figures["rejected"]),
        dead_letters=int(figures["dead_lettered"]),
        webhook_calls=calls,
        by_status=by_status,
        outage=outage,
        governor=governors[POOL].as_json() if POOL in governors else None,
        lessons=lessons,
    )


def follow(
    conn: psycopg.Connection,
    hook: WebhookServer,
    workers: list[subprocess.Popen[bytes]],
    logs: Path,
    scenario: Scenario,
    plan: Plan,
    started: float,
    lessons: list[dict[str, Any]],
) -> tuple[float | None, dict[str, float] | None]:
    """Watch the drain until every intent has ended (committed, rejected or dead), taking
    the provider down and up again on the way where the scenario says so; each
    change of the governor's learned rate, pause or breaker goes into `lessons`.

    Returns the seconds after which it gave up (None if it did not) and, if the
    outage happened, when it began and how long it lasted.
    """
    give_up_at = started + plan.give_up_s(scenario)
    down_at = started + plan.outage_begins_s() if scenario.outage_s else None
    went_down = came_up = None
    try:
        while True:
            now = time.perf_counter()
            if down_at is not None and went_down is None and now >= down_at:
                hook.script(outage=OUTAGE_MODE)
                went_down = time.perf_counter()
                say(f"{scenario.name}: provider down at {went_down - started:.1f} s")
            if went_down is not None and came_up is None and now >= went_down + scenario.outage_s:
                hook.script(outage=None)
                came_up = time.perf_counter()
                say(f"{scenario.name}: provider back at {came_up - started:.1f} s")
            note_lesson(conn, lessons, now - started)
            figures = pool_figures(conn)
            ended = sum(int(figures[k]) for k in ("consumed", "rejected", "dead_lettered"))
            if ended >= plan.units:
                return None, _outage(started, went_down, came_up)
            if now >= give_up_at:
                say(f"{scenario.name}: gave up after {now - started:.0f} s ({ended:,} ended)")
                return now - started, _outage(started, went_down, came_up)
            _exited(workers, logs)
            time.sleep(POLL_S)
    finally:
        if went_down is not None and came_up is None:
            # Everything ended (or the run gave up) while the provider was down.
            hook.script(outage=None)


def note_lesson(conn: psycopg.Connection, lessons: list[dict[str, Any]], at_s: float) -> None:
    governor = telemetry.webhook_governors(conn).get(POOL)
    if governor is None:
        return
    lesson = {
        "learned_rate": None if governor.learned_rate is None else round(governor.learned_rate),
        "paused": governor.retry_after_until is not None,
        "breaker": governor.breaker,
    }
    if not lessons or any(lessons[-1][k] != v for k, v in lesson.items()):
        lessons.append(
            {
                "at_s": round(at_s, 1),
                **lesson,
                "governed_rate": None
                if governor.governed_rate is None
                else round(governor.governed_rate),
                "calls": governor.calls_total,
                "calls_429": governor.throttled_total,
            }
        )


def _outage(
    started: float, went_down: float | None, came_up: float | None
) -> dict[str, float] | None:
    if went_down is None:
        return None
    lasted = (came_up if came_up is not None else time.perf_counter()) - went_down
    return {"began_after_s": round(went_down - started, 2), "lasted_s": round(lasted, 2)}


def targets(outcomes: list[Outcome]) -> list[Target]:
    """Issue 26's bars, each scenario's judged on its own run."""
    found = []
    for o in outcomes:
        name, units = o.scenario.name, o.units
        committed = f"{o.committed:,} of {units:,} committed"
        if o.duplicates:
            committed += f", {o.duplicates:,} duplicates"
        if name in BARS:
            within, calls = BARS[name]
            drained = o.drained_shown
            if o.ratio_to_ideal is not None:
                drained += f", {times(o.ratio_to_ideal, 2)}"
            found += [
                Target.at_most(
                    f"{name}: drained within {within}x the ideal ({o.ideal_s:g} s)",
                    o.ratio_to_ideal,
                    within,
                    drained,
                    drained_s=o.drained_s,
                    ideal_s=o.ideal_s,
                )
                .unless(o.all_committed, committed)
                .unless(not o.dead_letters, f"{o.dead_letters:,} dead letters"),
                Target.at_most(
                    f"{name}: <= {calls} webhook calls per sale",
                    o.calls_per_sale,
                    calls,
                    "-" if o.calls_per_sale is None else f"{o.calls_per_sale:.2f}",
                    webhook_calls=o.webhook_calls,
                    calls_429=o.throttled,
                    committed=o.committed,
                ),
            ]
        elif name == "outage":
            found += [
                Target.at_most(
                    f"outage: 0 dead letters ({OUTAGE_MODE} for {o.scenario.outage_s:g} s, "
                    f"max_retries {o.scenario.max_retries})",
                    o.dead_letters,
                    0,
                    f"{o.dead_letters:,}",
                ).unless(o.outage is not None, "the outage never began"),
                Target.at_least(
                    f"outage: all {units:,} committed", o.committed, units, committed
                ).unless(not o.duplicates, f"{o.duplicates:,} duplicates"),
            ]
        else:
            rate = o.claims_per_sec
            shown = committed if rate is None else f"{committed}, {rate:,.0f} claims/s"
            found.append(
                Target.at_least(
                    f"unlimited: all {units:,} committed (its rate: the same-run baseline)",
                    o.committed,
                    units,
                    shown,
                    claims_per_sec=None if rate is None else round(rate, 1),
                ).unless(not o.duplicates, f"{o.duplicates:,} duplicates")
            )
    return found


def markdown(outcomes: list[Outcome], found: list[dict[str, Any]]) -> str:
    def cell(value: Any, form: str, suffix: str = "") -> str:
        return "-" if value is None else f"{value:{form}}{suffix}"

    lines = [
        "Drained: from the first claim queued to the last commit in DB2 (DB2's tickets); "
        "the ideal is units / limit (+ the outage).",
        "",
        "| scenario | provider | drained | ideal | x ideal | claims/s | webhook calls | 429s "
        "| calls/sale | committed | dead letters |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        provider = o.scenario.provider
        if o.outage:
            provider += f" from {o.outage['began_after_s']:.1f} s"
        lines.append(
            f"| {o.scenario.name} | {provider} | {o.drained_shown} | "
            f"{cell(o.ideal_s, '.1f', ' s')} | {times(o.ratio_to_ideal, 2)} | "
            f"{cell(o.claims_per_sec, ',.0f')} | {o.webhook_calls:,} | {o.throttled:,} | "
            f"{cell(o.calls_per_sale, '.2f')} | {o.committed:,} | {o.dead_letters:,} |"
        )
    lines += ["", targets_markdown(found)]
    return "\n".join(lines)


def provider_command(
    units: int = typer.Option(
        20_000, "--units", min=1, max=1_000_000, help="Units drained per scenario."
    ),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="`intake drain` processes."),
    limit: int = typer.Option(
        200, "--limit", min=1, help="Calls a second the provider accepts (429 beyond)."
    ),
    scenarios: str = typer.Option(
        ",".join(SCENARIOS),
        "--scenarios",
        help="Comma list of retry-after, no-retry-after, outage, unlimited.",
    ),
    outage_s: float = typer.Option(
        20.0,
        "--outage-s",
        min=1.0,
        help=f"How long the provider answers {OUTAGE_MODE} in the outage scenario.",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="A smoke run: 600 units, limit 100, a 3 s outage, quicker to give up.",
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp dir (workers' logs)."),
    as_json: bool = json_option(),
    output: Path | None = output_option(),
) -> None:
    """The drain against a payment provider that meters it: 429s, Retry-After, an outage.

    Per scenario: time from the first claim queued to the last commit in DB2
    against the ideal (units / limit, plus the outage), webhook calls, 429s,
    calls per sale, sales committed and dead letters.
    """
    names = parse_scenarios(scenarios)
    if quick:
        units, limit, outage_s = QUICK_UNITS, QUICK_LIMIT, QUICK_OUTAGE_S
    plan = Plan(
        units, workers, limit, outage_s, QUICK_GIVE_UP_SLACK_S if quick else GIVE_UP_SLACK_S
    )
    chosen = [scenario(name, limit, outage_s) for name in names]
    with (
        events.workdir("provider", keep) as workdir,
        events.durable_clusters(workdir) as (_, running),
    ):
        outcomes = [run_scenario(workdir, running, s, plan) for s in chosen]
    found = targets_json(targets(outcomes))
    report = {
        "machine": machine(synchronous_commit="on"),
        "settings": {
            "units": units,
            "workers": workers,
            "drain_concurrency": DRAIN_CONCURRENCY,
            "limit_per_sec": limit,
            "outage_s": outage_s,
            "outage_mode": OUTAGE_MODE,
            "outage_begins_after_s": round(plan.outage_begins_s(), 2),
            "give_up_after": f"{GIVE_UP_TIMES:g}x the ideal + {plan.give_up_slack_s:g} s",
            "drained": "first claim queued to last commit in DB2 (tickets' claimed_at, "
            "committed_at)",
        },
        "results": [o.as_json() for o in outcomes],
        "targets": found,
    }
    publish(report, "provider", output, as_json, lambda: markdown(outcomes, found))
