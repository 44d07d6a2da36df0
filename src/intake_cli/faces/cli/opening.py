"""A pool's fair opening: run it without a gateway, and replay it as an auditor."""

from __future__ import annotations

import asyncio

import psycopg
import typer

from intake_cli.engine import opening
from intake_cli.faces.cli.root import JsonOption, app, err, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.db import connect, endpoints
from intake_cli.platform.display import markup
from intake_cli.platform.errors import UnknownPool, UsageError
from intake_cli.platform.pgconn import async_pool

opening_app = typer.Typer(
    help="A pool's fair opening (pools[].opens_at): run it, or verify it from DB1.",
    no_args_is_help=True,
)
app.add_typer(opening_app, name="opening")


def _pool(pool_id: str) -> config.PoolSettings | None:
    if reason := config.check_pool_id(pool_id):
        raise UsageError(f"pool id: {reason}")
    return next((p for p in load_settings().pools if p.pool_id == pool_id), None)


@opening_app.command("open")
def open_command(pool_id: str = typer.Argument(..., help="The pool to open.")) -> None:
    """Close the pool's waiting room at opens_at (DB1's clock) and admit it.

    What `intake gateway` does by itself. Run it where buyers reach DB1 only
    through PostgREST (public.join_waiting_room, public.claim_resource): until
    an opening completes, every claim in the pool is answered `opening`. Waits
    for opens_at, admits at pools[].admit_per_second, and returns when every
    buyer in the room has been answered; if another process is admitting,
    waits for it. Safe to run on several hosts at once.
    """
    found = _pool(pool_id)
    settings = load_settings()

    async def run() -> None:
        pool = async_pool(endpoints(settings).db1, min_size=2, max_size=2, open=False)
        await pool.open()
        try:
            await opening.open_pool(pool, pool_id, found.admit_per_second if found else 0)
        finally:
            await pool.close()

    with connect(endpoints(settings).db1, "DB1") as conn:
        verdict = _verdict(conn, pool_id)
    if verdict.opens_at is None:
        raise UsageError(f"pool {pool_id!r} has no opening in DB1 (pools[].opens_at, `intake up`)")
    asyncio.run(run())
    out.print(f"pool {markup(pool_id)}: opened")


def _verdict(conn: psycopg.Connection, pool_id: str) -> opening.Verdict:
    try:
        return opening.verify(conn, pool_id)
    except opening.NoSuchPool:
        raise UnknownPool(f"pool {pool_id!r} is not provisioned in DB1") from None


@opening_app.command("verify")
def verify_command(
    pool_id: str = typer.Argument(..., help="The pool whose opening to replay."),
    as_json: bool = JsonOption,
) -> None:
    """Replay the pool's opening from DB1's tables alone and say yes or no.

    Checks that every receipt handed out is in the shuffled room, that the
    room is what intake.openings recorded when it closed, that the stored
    seed puts every admitted buyer exactly where they were admitted, and that
    no buyer outside the room holds a unit taken before the admission was
    complete. Exit 0: yes; 1: no (or not complete yet); 2: bad input.
    See docs/gateway.md, "Replaying an opening".
    """
    _pool(pool_id)
    with connect(endpoints(load_settings()).db1, "DB1") as conn:
        verdict = _verdict(conn, pool_id)
    if as_json:
        print_json(verdict.as_json())
    else:
        pid = markup(pool_id)
        if verdict.holds:
            out.print(
                f"pool {pid}: [green]the opening holds[/]: {verdict.waiting:,} buyers in the "
                f"room, all admitted in the order seed {verdict.seed} gives",
                highlight=False,
            )
        for problem in verdict.problems:
            err.print(f"pool {pid}: [bold red]{markup(problem)}[/]", highlight=False)
        if not verdict.problems and verdict.completed_at is None:
            err.print(f"pool {pid}: the admission is under way: verify again when complete")
    if not verdict.holds:
        raise typer.Exit(1)
