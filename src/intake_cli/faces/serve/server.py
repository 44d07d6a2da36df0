"""Running `intake serve`: bind, serve until a signal, stop within a bound."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from intake_cli.faces.serve.app import build_app
from intake_cli.faces.serve.tick import TickExpectation
from intake_cli.platform.config import Settings
from intake_cli.platform.errors import IntakeError
from intake_cli.platform.logs import event
from intake_cli.platform.signals import stop_on_signals

# How long open requests (a tick mid-batch) get to finish when stopping.
SHUTDOWN_TIMEOUT_S = 30.0


class BindFailed(IntakeError):
    """intake serve could not listen on the address it was given."""

    exit_code = 2


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    token: str,
    logger: logging.Logger,
    tick_token: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    ticks: TickExpectation | None = None,
) -> None:
    """Answer until SIGINT or SIGTERM, then stop gracefully."""
    app = build_app(
        settings,
        token=token,
        host=host,
        tick_token=tick_token,
        allowed_hosts=allowed_hosts,
        ticks=ticks,
    )
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    stopping = asyncio.Event()
    # The handlers stay until the end: a second signal while running ticks
    # finish must not kill the process halfway through its shutdown.
    with stop_on_signals(asyncio.get_running_loop(), stopping.set):
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise BindFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            event(logger, logging.INFO, "serving", url=f"http://{_netloc(host, port)}/")
            await stopping.wait()
            event(logger, logging.INFO, "stopping", reason="signal")
        finally:
            await runner.cleanup()
            event(logger, logging.INFO, "stopped")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
