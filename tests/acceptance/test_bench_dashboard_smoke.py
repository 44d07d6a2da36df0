"""`intake bench dashboard --quick` runs end to end and reports its figures (not a timed test).

Run through its typer function directly, so it works whether or not the
command is registered under `intake bench` yet.
"""

import json
import subprocess
import sys

from tests.conftest import ROOT

RUN = (
    "import typer; from intake_cli.tools.bench.dashboard import dashboard_command; "
    "typer.run(dashboard_command)"
)


def test_bench_dashboard_quick_reports_both_runs():
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    base, dashboard = report["results"]
    assert (base["pages"], dashboard["pages"]) == (0, 3)
    assert base["intents"] == dashboard["intents"] == 1000
    assert dashboard["serve_cpu_s"] > 0 and dashboard["errors"] == []
    # Every page got every row written while the drain ran.
    assert dashboard["rows_written"] > 0
    assert dashboard["rows_seen_by_every_page"] == dashboard["rows_written"]
    assert [t["what"] for t in report["targets"]][1] == "every page got every metrics row"
