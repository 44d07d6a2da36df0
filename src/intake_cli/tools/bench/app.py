"""`intake bench`: every benchmark's command, registered in one place.

Each benchmark module defines its command as a plain function; this group is
the only place that names them, so the CLI (faces/cli/tools.py) mounts one
object and the benchmarks stay importable without one another.
"""

from __future__ import annotations

import typer

from intake_cli.tools.bench import (
    claims,
    dashboard,
    drain,
    e2e,
    gateway,
    metrics,
    provider,
    recovery,
    seeding,
    tick,
)

bench_app = typer.Typer(
    help="Measure intake against baselines on a throwaway local cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench_app.callback()
def _bench() -> None:
    """Measure intake against baselines on a throwaway local cluster."""


# In this order in `intake bench --help`.
bench_app.command("claims")(claims.claims_command)
bench_app.command("drain")(drain.drain_command)
bench_app.command("metrics")(metrics.metrics_command)
bench_app.command("recovery")(recovery.recovery_command)
bench_app.command("e2e")(e2e.e2e_command)
bench_app.command("seeding")(seeding.seeding_command)
bench_app.command("gateway")(gateway.gateway_command)
bench_app.command("tick")(tick.tick_command)
bench_app.command("dashboard")(dashboard.dashboard_command)
bench_app.command("provider")(provider.provider_command)
