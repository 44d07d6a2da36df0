"""Running the event: the live view, pause/resume, live settings, the admin server."""

from __future__ import annotations

import asyncio

import typer

from intake_cli.engine import controls
from intake_cli.faces import watch
from intake_cli.faces.cli.root import JsonOption, app, err, finite, load_settings, out, print_json
from intake_cli.faces.serve import auth as serve_auth
from intake_cli.faces.serve import server as serve_server
from intake_cli.faces.serve.tick import TickExpectation
from intake_cli.platform import config, logs
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import markup
from intake_cli.platform.errors import UsageError


@app.command("watch")
def watch_command(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (scripts, tests)."),
    refresh: float = typer.Option(
        1.0, "--refresh", min=0.2, max=60, callback=finite, help="Seconds between redraws."
    ),
    as_json: bool = typer.Option(False, "--json", help="With --once: the frame's figures as JSON."),
) -> None:
    """Live view of the engine: units per pool, queue, velocity, ETA, DLQ, workers.

    Reads engine_metrics (collected every 5 s by pg_cron; by watch itself
    where no pg_cron job does). Metrics older than 15 s are flagged STALE;
    a worker without a heartbeat for 10 s is shown as silent. Ctrl-C exits.
    """
    settings = load_settings()
    if as_json and not once:
        raise UsageError("--json prints one frame: use it with --once")
    if once:
        snap = watch.snapshot(settings)
        if as_json:
            print_json(snap.as_json())
        else:
            watch.print_once(snap)
        return
    watch.live(settings, refresh)


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    log_format: str = typer.Option("json", "--log-format", help="json | text"),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="A name browsers may reach serve by (a proxy's name), besides IP addresses, "
        "localhost and --host. Repeat for several.",
    ),
    expect_ticks: bool | None = typer.Option(
        None,
        "--expect-ticks/--no-expect-ticks",
        help="Whether drain ticks should arrive. Default: yes once DB1 schedules the "
        "intake-drain-tick job or a tick has arrived.",
    ),
    tick_stale_after: float | None = typer.Option(
        None,
        "--tick-stale-after",
        min=1,
        max=86_400,
        callback=finite,
        help="Seconds without a tick before it is flagged stale. Default: 3 of the tick "
        "job's intervals, at least 30 s (180 s for a minute schedule).",
    ),
) -> None:
    """Admin API, Prometheus /metrics and the drain's HTTP tick, in one process.

    Every /api/ path needs `Authorization: Bearer $INTAKE_ADMIN_TOKEN`; without
    that variable, serve (on a loopback address only) makes a token for the
    run and prints it once with the dashboard's address. Requests naming
    another Host, coming from another origin's web page, or changing
    something without a JSON body are refused. INTAKE_TICK_TOKEN, if set, is
    a second token that can only call POST /api/drain/tick. /metrics is open
    on loopback, behind the token otherwise. SIGINT/SIGTERM stop it
    gracefully (exit 0): running ticks finish or hand their batch back.
    See docs/serve.md.
    """
    if log_format not in ("json", "text"):
        raise UsageError(f"--log-format: expected json or text, got {log_format!r}")
    for name in allowed_host:
        if reason := serve_auth.check_host_name(name):
            raise UsageError(f"--allowed-host {name!r}: {reason}")
    token, tick_token = serve_auth.tokens_from_env()
    start = serve_auth.check_start(host, port, token)
    settings = load_settings()
    if start.notice:
        err.print(start.notice, markup=False, highlight=False, soft_wrap=True)
    logger = logs.configure("info", log_format)
    asyncio.run(
        serve_server.serve(
            settings,
            host=host,
            port=port,
            token=start.token,
            logger=logger,
            tick_token=tick_token,
            allowed_hosts=tuple(allowed_host),
            ticks=TickExpectation(expect_ticks, tick_stale_after),
        )
    )


pool_app = typer.Typer(help="Pause or resume a pool while the event runs.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


def _set_paused(pool_id: str, paused: bool) -> None:
    settings = load_settings()
    with connect(endpoints(settings).db1, "DB1") as conn:
        controls.set_paused(conn, pool_id, paused)
    out.print(f"pool {markup(pool_id)}: {'paused' if paused else 'resumed'}")


@pool_app.command("pause")
def pool_pause(pool_id: str = typer.Argument(..., help="The pool to pause.")) -> None:
    """Claims answer "paused"; workers hand the pool's intents back until resumed."""
    _set_paused(pool_id, True)


@pool_app.command("resume")
def pool_resume(pool_id: str = typer.Argument(..., help="The pool to resume.")) -> None:
    """Claims and draining go on where they stopped."""
    _set_paused(pool_id, False)


config_app = typer.Typer(help="Change a pool's live settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("set")
def config_set(
    pool_id: str = typer.Argument(..., help="The pool to change."),
    assignments: list[str] = typer.Argument(
        ..., help="KEY=VALUE: " + ", ".join(config.LIVE_SETTINGS)
    ),
    as_json: bool = JsonOption,
) -> None:
    """Change live settings (checked like intake.yaml); running workers use them at their
    next batch. `intake up` sets them back to what intake.yaml says."""
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    changes = controls.parse_assignments(assignments)
    settings = load_settings()
    where = endpoints(settings)
    applied = controls.set_settings(where.db1, where.db2, pool_id, changes)
    # A URL stored before credentials were refused still never reaches the screen.
    shown = {
        key: tuple(config.redact(v) if isinstance(v, str) else v for v in pair)
        for key, pair in applied.items()
    }
    if as_json:
        print_json({key: {"old": old, "new": new} for key, (old, new) in shown.items()})
        return
    for key, (old, new) in shown.items():
        out.print(markup(f"pool {pool_id}: {key} {old} → {new}"))
