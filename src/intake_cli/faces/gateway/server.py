"""Running the gateway: one process, or N sharing a port with SO_REUSEPORT.

The processes share nothing but DB1: each has its own DB1 pool, batcher,
rate buckets and claim snapshot, so adding workers (or hosts behind a load
balancer) needs no coordination.
"""

from __future__ import annotations

import asyncio
import sys

from intake_cli.faces.gateway import app as gateway_app
from intake_cli.faces.gateway import http1
from intake_cli.faces.gateway.auth import Verifier
from intake_cli.platform import eventloop
from intake_cli.platform.config import Settings
from intake_cli.platform.processes import run_processes
from intake_cli.platform.signals import stop_on_signals

# Idle keep-alive connections are closed after this many seconds, so that
# clients that stop talking do not pile up sockets.
KEEPALIVE_S = 15.0


def verifier(settings: Settings) -> Verifier:
    """The buyers' token check, or UsageError (exit 2): no secret nor JWKS URL,
    a weak INTAKE_JWT_SECRET, or a JWKS URL over plain http."""
    return Verifier.from_environment(settings.gateway.jwt_audience, settings.gateway.jwks_url)


def serve(settings: Settings, dsn: str, host: str, port: int, reuse_port: bool) -> None:
    """One gateway process, until SIGINT/SIGTERM."""
    gateway = settings.gateway
    # Each --workers process reads the secret itself (spawned, it inherits
    # the environment), and is held to the same check.
    checked = verifier(settings)
    state = gateway_app.build(gateway, settings.queue_name, dsn, checked, settings.pools)
    eventloop.run(_serve(state, host, port, reuse_port))


async def _serve(state: gateway_app.Gateway, host: str, port: int, reuse_port: bool) -> None:
    settings = state.settings
    server = http1.Server(
        gateway_app.dispatcher(state),
        max_body_bytes=settings.max_body_bytes,
        client_timeout_s=settings.client_timeout_s,
        idle_s=min(KEEPALIVE_S, settings.client_timeout_s),
    )
    stopping = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stopping.set):
        await gateway_app.start(state)
        try:
            await server.listen(host, port, reuse_port)
            await stopping.wait()
        finally:
            await server.close()
            await gateway_app.stop(state)


def run(settings: Settings, dsn: str, host: str, port: int, workers: int) -> None:
    # Refused here, before any worker starts, rather than N times over.
    verifier(settings)
    print(f"gateway listening on http://{host}:{port} ({workers} worker(s))", flush=True)
    if workers == 1:
        serve(settings, dsn, host, port, reuse_port=False)
        return
    if run_processes(serve, (settings, dsn, host, port, True), workers):
        sys.exit(1)
