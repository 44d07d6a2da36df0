"""Shared fixtures: one embedded PostgreSQL cluster for the session (the same
code `intake up` uses), a template database holding DB1's schema, and a fresh
copy of it per test (CREATE DATABASE … TEMPLATE, as procrastinate does)."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from intake_cli.engine import schema
from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import Cluster, EmbeddedClusters

ROOT = Path(__file__).resolve().parents[1]
INTAKE = [sys.executable, "-m", "intake_cli"]
TEMPLATE_DB = "intake_template"
_counter = itertools.count()


def _dsn(cluster: Cluster, dbname: str) -> str:
    return cluster.dsn_for(dbname)


@pytest.fixture(autouse=True)
def _stop_signals_restored() -> Iterator[None]:
    """A drain worker or serve run in-process ignores SIGINT and SIGTERM once it
    stops (a repeated signal must not kill its shutdown). Put back after each
    test: every later test's subprocesses would inherit the ignored signals and
    miss a stop sent while they start (seen: a fleet stopped as it started
    never stopped, after test_commit_timeout's in-process worker)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


# Room a run's clusters need in memory: each test's databases are dropped
# after it, WAL is kept short (cluster below) and an event's clusters go with
# its test.
_SCRATCH_NEEDS = 4 << 30


def _scratch() -> str | None:
    """Where the tests' clusters live: in memory (/dev/shm) where it has room,
    else the temp dir. Throwaway clusters gain nothing from a disk but its
    writes (every test's database is 9 MB, every initdb 40). INTAKE_TEST_TMPDIR
    names another place."""
    chosen = os.environ.get("INTAKE_TEST_TMPDIR")
    if chosen:
        return chosen
    shm = Path("/dev/shm")
    try:
        if (
            shm.is_dir()
            and os.access(shm, os.W_OK)
            and shutil.disk_usage(shm).free > _SCRATCH_NEEDS
        ):
            return str(shm)
    except OSError:
        pass
    return None


def scratch_env() -> dict[str, str]:
    """TMPDIR for a subprocess that makes its own clusters (`intake bench`):
    the same place as the tests' own (_scratch)."""
    scratch = _scratch()
    return {"TMPDIR": scratch} if scratch else {}


@contextlib.contextmanager
def scratch_tempdir() -> Iterator[None]:
    """scratch_env for a benchmark run in this process: tempfile's directory."""
    saved = tempfile.tempdir
    tempfile.tempdir = _scratch() or saved
    try:
        yield
    finally:
        tempfile.tempdir = saved


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: under root that lives in a 0700 directory the
    # unprivileged server user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="intake-tests-", dir=_scratch()))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(workdir: Path) -> Iterator[Cluster]:
    clusters = EmbeddedClusters(
        workdir / "clusters",
        # Tests check correctness, not durability: skip the fsync wait.
        EmbeddedSettings(max_connections=400, synchronous_commit=False),
    )
    started = clusters.ensure(("db1", "db2"))
    for server in started.values():
        # Throwaway clusters: without fsync, each test's CREATE DATABASE and
        # the shutdown checkpoint over hundreds of databases write, not wait.
        with psycopg.connect(_dsn(server, "postgres"), autocommit=True) as conn:
            conn.execute("alter system set fsync = off")
            # In memory (workdir): WAL recycled by a checkpoint every 256 MB
            # rather than 1 GB.
            conn.execute("alter system set max_wal_size = '256MB'")
            conn.execute("select pg_reload_conf()")
    yield started["db1"]
    clusters.stop()


@pytest.fixture(scope="session")
def db2_cluster(cluster: Cluster, workdir: Path) -> Cluster:
    return EmbeddedClusters(workdir / "clusters").load()["db2"]


@pytest.fixture(scope="session")
def template_db(cluster: Cluster) -> str:
    with psycopg.connect(_dsn(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"create database {TEMPLATE_DB}")
    with psycopg.connect(_dsn(cluster, TEMPLATE_DB), autocommit=True) as conn:
        schema.apply_db1(conn, "intents", "intents_dlq")
    return TEMPLATE_DB


def new_database(cluster: Cluster, template: str = "template0") -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(_dsn(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(f"create database {name} template {template}")
    return _dsn(cluster, name)


def drop_database(cluster: Cluster, dsn: str) -> None:
    """Drop a database new_database made, whoever is still connected to it.

    A worker's cluster would otherwise hold every test's databases (9 MB each
    for DB1) until the session ends: gigabytes written to disk, and seconds
    to remove them at the end of the run.
    """
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    # A test that crashed or stopped the cluster leaves nothing to drop.
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(_dsn(cluster, "postgres"), autocommit=True, connect_timeout=5) as conn,
    ):
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def db1_dsn(cluster: Cluster, template_db: str) -> Iterator[str]:
    """A fresh DB1 with the intake schema and pgmq, no pools yet."""
    dsn = new_database(cluster, template_db)
    yield dsn
    drop_database(cluster, dsn)


@pytest.fixture
def empty_db_dsn(cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database (pgmq not installed)."""
    dsn = new_database(cluster)
    yield dsn
    drop_database(cluster, dsn)


@pytest.fixture
def db2_dsn(db2_cluster: Cluster) -> Iterator[str]:
    dsn = new_database(db2_cluster)
    yield dsn
    drop_database(db2_cluster, dsn)


def pool_spec(pool_id: str = "p1", inventory: int = 100, **extra: object) -> dict:
    spec = {
        "pool_id": pool_id,
        "inventory": inventory,
        "validation_webhook_url": "http://127.0.0.1:9/validate",
    }
    spec.update(extra)
    return spec


def write_config(directory: Path, db1: str, db2: str, pools: list[dict], **top: object) -> Path:
    data = {
        "db1": {"dsn": db1},
        "db2": {"dsn": db2, "install_example_ledger": True},
        "pools": pools,
        **top,
    }
    path = directory / f"intake-{next(_counter)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_intake(
    *args: str, config: Path | None = None, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a subprocess, as an operator runs it."""
    argv = [*INTAKE, *(["-c", str(config)] if config else []), *args]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
    return proc


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _console_sizes_from_environment(*consoles: Any) -> Iterator[None]:
    """Rich reads COLUMNS and LINES when a console is made, and intake makes its
    consoles at import: size them as a process started now, in this
    environment, would (xdist's workers run with COLUMNS=80 and LINES=24)."""
    saved = [(console._width, console._height) for console in consoles]
    columns, lines = os.environ.get("COLUMNS", ""), os.environ.get("LINES", "")
    for console in consoles:
        console._width = int(columns) if columns.isdigit() else None
        console._height = int(lines) if lines.isdigit() else None
    try:
        yield
    finally:
        for console, (width, height) in zip(consoles, saved, strict=True):
            console._width, console._height = width, height


def intake(
    *args: str, config: Path | None = None, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI's own entry point, in this process: what `run_intake` shows of a
    command (exit code, stdout, stderr) without a Python start-up per call.

    For commands whose output is the point. A test about what only a process
    shows (a signal, a lock held by another process, a fleet of workers, the
    environment read at import) keeps `run_intake`.
    """
    # Imported here: a unit test run alone should not pay for the whole CLI.
    from intake_cli.faces.cli import app
    from intake_cli.faces.cli.root import err as err_console
    from intake_cli.faces.cli.root import out as out_console
    from intake_cli.faces.cli.root import reporting_errors

    argv = [*(["-c", str(config)] if config else []), *args]
    out, err = io.StringIO(), io.StringIO()
    # The command configures intake's logger for its own stderr; the next
    # test must find the logger as it was, not writing into this call's buffer.
    logger = logging.getLogger("intake")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    code: int = 0
    try:
        with (
            _environment(env or {}),
            _console_sizes_from_environment(out_console, err_console),
            contextlib.chdir(ROOT),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            stdin, sys.stdin = sys.stdin, io.StringIO()  # as a subprocess with nothing to read
            try:
                # The prog name a subprocess's usage lines carry.
                reporting_errors(lambda: app(args=argv, prog_name="python -m intake_cli"))
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:
                # What the interpreter prints for an uncaught exception, so a
                # test that looks for "Traceback" sees one.
                traceback.print_exc()
                code = 1
            finally:
                sys.stdin = stdin
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    proc = subprocess.CompletedProcess(
        ["intake", *argv], code, stdout=out.getvalue(), stderr=err.getvalue()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
    return proc


def snapshot(dsn: str) -> dict[str, object]:
    """Everything about DB1 a bad command must not change."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        relations = conn.execute(
            "select n.nspname, c.relname, c.relkind, c.relpersistence from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname in ('intake', 'pgmq', 'public', 'auth') order by 1, 2"
        ).fetchall()
        functions = conn.execute(
            "select p.oid::regprocedure::text, md5(p.prosrc), p.proacl::text from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname in ('intake', 'public', 'auth') order by 1"
        ).fetchall()
        state: dict[str, object] = {"relations": relations, "functions": functions}
        if any(r[:2] == ("intake", "engine_config") for r in relations):
            state["config"] = conn.execute(
                "select to_jsonb(c) - 'updated_at' - 'created_at' from intake.engine_config c"
                " order by pool_id"
            ).fetchall()
            state["units"] = conn.execute(
                "select pool_id, status::text, count(*), md5(string_agg(unit_no::text || ':'"
                " || coalesce(locked_by, ''), ',' order by unit_no))"
                " from intake.allocations group by 1, 2 order by 1, 2"
            ).fetchall()
            state["queue"] = conn.execute(
                "select msg_id, read_ct, message from pgmq.q_intents order by msg_id"
            ).fetchall()
            state["versions"] = conn.execute(
                "select version, name from intake.schema_version order by 1"
            ).fetchall()
        return state
