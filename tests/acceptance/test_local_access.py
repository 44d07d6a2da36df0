"""The embedded clusters are private to the user who started them.

Another OS user on the machine (`nobody` here) is refused by both clusters,
as `intake` and as `postgres`, with or without the passfile intake uses; the
password lives in a 0600 passfile of intake's user and nowhere else in the
state directory. A state directory an older intake made with trust
authentication is converted by the next `intake up`.

The tests read clusters.json and run the CLI in subprocesses, so they judge
whichever intake is on the path (they fail on the trust-era one).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from intake_cli.platform.embedded import _as, _server_account, pg_bindir
from tests.conftest import intake, pool_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running as a second OS user needs root")

OTHER_USER = "nobody"


def _other() -> pwd.struct_passwd:
    return pwd.getpwnam(OTHER_USER)


def as_other_user(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run argv as the unprivileged second user, with a bare environment."""
    account = _other()
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **env},
    )


def make_event(workdir: Path, name: str) -> Path:
    event = workdir / name
    event.mkdir(mode=0o755)
    config = event / "intake.yaml"
    config.write_text(yaml.safe_dump({"pools": [pool_spec("priv", 20)]}))
    intake("up", config=config, check=True)
    return config


def ports(state_dir: Path) -> dict[str, int]:
    clusters = json.loads((state_dir / "clusters.json").read_text())
    return {name: spec["port"] for name, spec in clusters.items()}


def psql_as_other(port: int, user: str, **env: str) -> subprocess.CompletedProcess[str]:
    return as_other_user(
        [
            str(pg_bindir() / "psql"),
            "-X",
            "-w",  # never prompt: a password must come from somewhere readable
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            user,
            "-d",
            "intake",
            "-c",
            "select 'connected as ' || current_user",
        ],
        **env,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode != 0, f"{what}: {proc.stdout}"
    assert "connected as" not in proc.stdout, what
    # Refused for want of the password, not for some other reason.
    assert "password" in proc.stderr, f"{what}: {proc.stderr}"


@pytest.fixture(scope="module")
def event(workdir: Path):
    config = make_event(workdir, "private-event")
    yield config
    intake("down", "--force", config=config)


@pytest.mark.slow
def test_another_os_user_is_refused_by_both_clusters(event: Path):
    state = event.parent / ".intake"
    found = ports(state)
    assert set(found) == {"db1", "db2"}
    for name, port in found.items():
        for user in ("intake", "postgres"):
            assert_refused(psql_as_other(port, user), f"{name} as {user}")
            # Pointing libpq at intake's passfile does not help: it cannot read it.
            assert_refused(
                psql_as_other(port, user, PGPASSFILE=str(state / "pgpass")),
                f"{name} as {user} with PGPASSFILE",
            )
    # psycopg too, with the very DSN shape intake uses (where this Python
    # can be run by the other user at all).
    try:
        usable = as_other_user([sys.executable, "-c", "import psycopg"]).returncode == 0
    except PermissionError:
        usable = False
    if usable:
        for name, port in found.items():
            dsn = f"host=127.0.0.1 port={port} user=intake dbname=intake passfile={state}/pgpass"
            proc = as_other_user(
                [
                    sys.executable,
                    "-c",
                    "import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=5)",
                    dsn,
                ]
            )
            assert proc.returncode != 0 and "password" in proc.stderr, (name, proc.stderr)
    # intake itself still gets in, to both.
    status = json.loads(intake("status", "--json", config=event, check=True).stdout)
    assert status["pools"][0]["inventory"] == 20
    intake("claim", "priv", "someone", config=event, check=True)


def test_the_password_is_in_a_passfile_only_intakes_user_can_read(event: Path):
    state = event.parent / ".intake"
    passfile = state / "pgpass"
    info = passfile.stat()
    assert info.st_mode & 0o777 == 0o600
    assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid())
    denied = as_other_user(["/bin/cat", str(passfile)])
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    passwords = [line.rsplit(":", 1)[1] for line in passfile.read_text().split("\n")[1:] if line]
    assert len(passwords) == 2 and all(len(p) >= 32 for p in passwords)
    # Not in any other file of the state directory others may read, and the
    # file initdb read it from is gone.
    assert not list(state.glob("*.pwfile*"))
    for path in state.iterdir():
        if path.is_file() and path != passfile:
            text = path.read_text(errors="replace")
            assert not any(p in text for p in passwords), path


def test_pg_cron_runs_its_jobs_without_a_password(event: Path):
    state = event.parent / ".intake"
    conf = (state / "db1" / "postgresql.auto.conf").read_text()
    if "pg_cron" not in conf:
        pytest.skip("pg_cron is not installed")
    # In background workers: no libpq session, so no password to find.
    assert "cron.use_background_workers = on" in conf
    assert "cron.host" not in conf


@pytest.mark.slow
def test_a_trust_era_state_directory_is_converted_by_up(workdir: Path):
    """An older intake made its clusters with trust: the next `intake up` sets
    a password, requires it, and keeps the event (queued intents included)."""
    config = make_event(workdir, "trust-era")
    state = config.parent / ".intake"
    intake("claim", "priv", "before", config=config, check=True)
    # Turn it back into what the older intake left: trust on loopback, no
    # passfile, no marker (the intake role's password stays: trust ignores it).
    account = _server_account()
    for name in ("db1", "db2"):
        hba = state / name / "pg_hba.conf"
        hba.write_text("host all all 127.0.0.1/32 trust\n")
        subprocess.run(
            [str(pg_bindir() / "pg_ctl"), "reload", "-D", str(state / name)],
            check=True,
            capture_output=True,
            cwd="/",
            **_as(account),
        )
    (state / "pgpass").unlink()
    (state / ".intake-state").unlink()
    db1 = ports(state)["db1"]
    opened = psql_as_other(db1, "intake")
    assert opened.returncode == 0 and "connected as intake" in opened.stdout, opened.stderr
    try:
        again = intake("up", "--json", config=config)
        assert again.returncode == 0, again.stderr
        assert ports(state)["db1"] == db1
        for name, port in ports(state).items():
            assert_refused(psql_as_other(port, "intake"), f"{name} after the conversion")
        assert (state / "pgpass").stat().st_mode & 0o777 == 0o600
        assert (state / ".intake-state").exists()
        status = json.loads(intake("status", "--json", config=config, check=True).stdout)
        assert status["queue"]["depth"] == 1
    finally:
        intake("down", "--force", config=config)
    assert not state.exists()
