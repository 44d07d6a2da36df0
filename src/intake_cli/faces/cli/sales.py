"""Claiming: one buyer, a small herd, and the buyers' HTTP door."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer

from intake_cli.engine import claims
from intake_cli.faces.cli.root import JsonOption, app, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import markup
from intake_cli.platform.errors import UnknownPool, UsageError


@app.command()
def claim(
    pool_id: str = typer.Argument(..., help="The pool to claim from."),
    user_id: str = typer.Argument(..., help="The buyer (trusted backends name the user)."),
    as_json: bool = JsonOption,
) -> None:
    """Claim one unit for USER_ID, as a trusted backend would.

    Exit 0 when the user holds a unit (claimed, already_claimed, limit_reached);
    75 (try again later) when the answer is `recovering` (DB1 lost its inventory
    in a crash and is rebuilding it), `not_open` (the pool's fair opening has
    not come) or `opening` (its waiting room is being admitted); 1 for any
    other answer (sold_out, paused…).
    """
    settings = load_settings()
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    if reason := config.check_user_id(user_id):
        raise UsageError(f"user id: {reason}")
    with connect(endpoints(settings).db1, "DB1") as conn:
        result = claims.claim(conn, pool_id, user_id)
    if result.outcome == "unknown_pool":
        raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
    if as_json:
        print_json(result.as_json())
    else:
        shown = " ".join(
            f"{k}={v}" for k, v in result.as_json().items() if v is not None and k != "outcome"
        )
        out.print(markup(f"{result.outcome}: {shown}"))
    if result.outcome in claims.TRY_LATER:
        raise typer.Exit(code=claims.RECOVERING_EXIT)
    if not result.holds_unit:
        raise typer.Exit(code=1)


@app.command()
def burst(
    pool_id: str = typer.Argument(..., help="The pool to claim from."),
    users: int = typer.Option(2000, "--users", min=1, max=1_000_000, help="Distinct buyers."),
    concurrency: int = typer.Option(
        64, "--concurrency", min=1, max=1000, help="Simultaneous connections."
    ),
    as_json: bool = JsonOption,
) -> None:
    """A small herd: USERS distinct buyers each claim once, CONCURRENCY at a time."""
    settings = load_settings()
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    db1 = endpoints(settings).db1
    with connect(db1, "DB1") as conn:
        if not claims.pool_exists(conn, pool_id):
            raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1")
    run = time.time_ns()
    buyers = [f"buyer-{run}-{n}" for n in range(users)]
    report = asyncio.run(claims.burst(db1, pool_id, buyers, concurrency))
    outcomes = report.outcomes
    data: dict[str, Any] = {
        "pool_id": pool_id,
        "users": users,
        "concurrency": concurrency,
        "outcomes": outcomes,
        "seconds": round(report.seconds, 3),
        "claims_per_sec": round(report.claims_per_sec, 1),
        "first_sold_out_s": None
        if report.first_sold_out_s is None
        else round(report.first_sold_out_s, 3),
        "latency_ms": {
            "p50": round(report.percentile(0.5), 2),
            "p99": round(report.percentile(0.99), 2),
        },
    }
    if as_json:
        print_json(data)
        return
    shown = markup(", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items())))
    out.print(
        f"{users:,} buyers on {markup(pool_id)} in {report.seconds:.2f} s "
        f"({report.claims_per_sec:,.0f} claims/s, p50 {data['latency_ms']['p50']} ms, "
        f"p99 {data['latency_ms']['p99']} ms): {shown}"
    )


@app.command()
def gateway(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8081, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=256, help="Processes sharing the port (SO_REUSEPORT)."
    ),
) -> None:
    """The buyers' door: claims over HTTP with a JWT, micro-batched into DB1.

    POST /v1/pools/{pool}/claim with `Authorization: Bearer <JWT>`; the buyer is
    the token's `sub` (a UUID). Tokens are checked with the HS256 secret in
    INTAKE_JWT_SECRET, or the keys at gateway.jwks_url. See docs/gateway.md.
    """
    from intake_cli.faces.gateway import server

    settings = load_settings()
    # Before DB1 is looked up or a port is bound: a weak INTAKE_JWT_SECRET or
    # a JWKS URL over plain http stops here with exit 2, whatever --workers says.
    server.verifier(settings)
    server.run(settings, endpoints(settings).db1, host, port, workers)
