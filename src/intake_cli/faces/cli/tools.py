"""The demo, the test webhook, the benchmarks and the version."""

from __future__ import annotations

from pathlib import Path

import typer

from intake_cli import __version__
from intake_cli.faces.cli.root import app, err, out, print_json
from intake_cli.platform.display import markup
from intake_cli.tools import demo, testhook
from intake_cli.tools.bench.app import bench_app


@app.command("demo")
def demo_command(
    buyers: int = typer.Option(100_000, "--buyers", min=1, max=1_000_000, help="Distinct buyers."),
    units: int = typer.Option(10_000, "--units", min=1, max=10_000_000, help="Units on sale."),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="`intake drain` processes."),
    connections: int = typer.Option(
        64, "--herd-connections", min=1, max=250, help="Connections the herd claims through."
    ),
    decline_share: float = testhook.share_option(
        0.03, "--decline-share", "Share of payments the webhook declines."
    ),
    fail_share: float = testhook.share_option(
        0.03,
        "--fail-share",
        "Share of intents whose first webhook call fails (503), then succeeds on retry.",
    ),
    directory: Path = typer.Option(
        None,
        "--dir",
        help="Where the demo's intake.yaml, clusters and logs live "
        "(default .intake-demo, env INTAKE_DEMO_DIR).",
        show_default=False,
    ),
    keep: bool = typer.Option(
        False, "--keep", help="Leave the event up afterwards (inspect it with -c DIR/intake.yaml)."
    ),
    no_watch: bool = typer.Option(
        False, "--no-watch", help="Print a progress line every 5 s instead of the live view."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
) -> None:
    """The whole engine under a herd, on embedded clusters, with a final report.

    up → test webhook (declining and transiently failing a few percent) →
    WORKERS drain processes → BUYERS claim concurrently → live view while it
    drains → report (claimed, committed, rejected, dead-lettered, oversold,
    duplicates in DB2, timings) → down. Exits 1 unless nothing was oversold,
    nothing is duplicated in DB2 and every claim is accounted for.
    """
    plan = demo.DemoPlan(
        buyers=buyers,
        units=units,
        workers=workers,
        herd_connections=connections,
        decline_share=decline_share,
        fail_share=fail_share,
        directory=(directory or demo.default_directory()).resolve(),
    )
    console = err if as_json else out
    report = demo.run(plan, console, live_view=console.is_terminal and not no_watch, keep=keep)
    if as_json:
        print_json(report.as_json())
    else:
        demo.render_report(report, out)
        if keep:
            out.print(f"left up: intake -c {markup(plan.directory / 'intake.yaml')} watch")
    if not report.ok:
        raise typer.Exit(1)


app.command("webhook-server")(testhook.webhook_server_command)
app.add_typer(bench_app, name="bench", help="Benchmarks against baselines from the same run.")


@app.command()
def version() -> None:
    """Print intake's version."""
    out.print(__version__)
