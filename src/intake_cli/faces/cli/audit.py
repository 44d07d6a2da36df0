"""Checking the ledger: DB2's sales against the intents DB1 knows."""

from __future__ import annotations

import typer

from intake_cli.engine import audit
from intake_cli.faces.cli.root import JsonOption, app, err, load_settings, out, print_json
from intake_cli.platform import config
from intake_cli.platform.display import markup
from intake_cli.platform.errors import UsageError

# Examples printed per finding; --json carries up to audit.SAMPLE_LIMIT.
SHOWN = 10


@app.command("audit")
def audit_command(
    pool_id: str | None = typer.Option(None, "--pool", help="Only this pool."),
    as_json: bool = JsonOption,
) -> None:
    """Compare DB2's ledger with DB1: units sold twice, sales DB1 lost, commits DB2 lacks.

    Reads what DB2 sold from db2.sold_query (a view or function returning
    idempotency_key, resource_id, pool_id; the example ledger's tickets by
    default) and compares it, per pool, with every intent DB1 knows. Exit 0
    when they agree, 1 when they do not, 2 for bad input, 3 when a database
    cannot be reached. See docs/audit.md.
    """
    if pool_id is not None and (reason := config.check_pool_id(pool_id)):
        raise UsageError(f"pool id: {reason}")
    report = audit.audit(load_settings(), pool_id)
    if as_json:
        print_json(report.as_json())
    else:
        source = markup(report.source) + (" (the example ledger)" if report.source.builtin else "")
        out.print(f"DB2's sales read from {source}", highlight=False)
        for pool in report.pools:
            pid = markup(pool.pool_id)
            verdict = "[green]agrees[/]" if pool.agrees else "[bold red]DISAGREES[/]"
            out.print(f"pool {pid}: {verdict}: {markup(pool.totals())}", highlight=False)
            for line in pool.lines(SHOWN):
                out.print("  " + markup(line), highlight=False)
        if not report.pools:
            out.print("no pools provisioned in DB1: nothing to compare")
    if not report.agrees:
        if not as_json:
            bad = sum(not p.agrees for p in report.pools)
            err.print(
                f"[bold red]audit:[/] DB1 and DB2 disagree in {bad} of {len(report.pools)} "
                "pools (docs/audit.md says what each finding means)",
                highlight=False,
            )
        raise typer.Exit(1)
