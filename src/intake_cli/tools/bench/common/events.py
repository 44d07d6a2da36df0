"""Throwaway clusters and events for the benchmarks, and intake's processes on them.

Everything lives under a temp dir the benchmark removes (or keeps, with
--keep); clusters have an event's defaults, durable commits included.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import yaml

from intake_cli.engine import claims, lifecycle
from intake_cli.platform import config
from intake_cli.platform.embedded import Cluster, EmbeddedClusters, free_port
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries
from intake_cli.tools.bench.common.results import say

POOL = "bench"
# serve refuses a guessable admin token: each bench run makes its own.
TOKEN = secrets.token_urlsafe(32)
# How long serve may take to answer at start, and a drain worker to stop.
START_S = 60.0
STOP_S = 60.0
# The webhook of a pool whose drain never runs.
NO_WEBHOOK = "http://127.0.0.1:9/validate"


@contextmanager
def workdir(name: str, keep: bool = False) -> Iterator[Path]:
    """A temp dir for one benchmark's clusters and logs, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"intake-bench-{name}-"))
    # The server runs as an unprivileged user when we are root: it must be
    # able to enter this directory, which mkdtemp creates 0700.
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def durable_clusters(
    workdir: Path, settings: config.EmbeddedSettings | None = None
) -> Iterator[tuple[EmbeddedClusters, dict[str, Cluster]]]:
    """Embedded DB1 and DB2 under workdir, running; stopped afterwards."""
    clusters = EmbeddedClusters(workdir / "clusters", settings or config.EmbeddedSettings())
    try:
        yield clusters, clusters.ensure(("db1", "db2"))
    finally:
        clusters.stop()


@contextmanager
def throwaway_event(
    workdir: Path, pool_id: str, units: int
) -> Iterator[tuple[EmbeddedClusters, str]]:
    """Durable embedded DB1 and DB2 under workdir, provisioned by `intake up` with one
    pool of `units`; yields the clusters and DB1's DSN, and removes them afterwards."""
    with durable_clusters(workdir) as (clusters, started):
        document = {
            "db1": {"dsn": started["db1"].dsn},
            "db2": {"dsn": started["db2"].dsn, "install_example_ledger": True},
            "pools": [
                {"pool_id": pool_id, "inventory": units, "validation_webhook_url": NO_WEBHOOK}
            ],
        }
        lifecycle.up(config.parse(document, workdir / "intake.yaml"))
        yield clusters, started["db1"].dsn


def fresh_database(cluster: Cluster, name: str) -> str:
    with open_sync(cluster.dsn) as conn:
        conn.execute(
            psycopg.sql.SQL("drop database if exists {}").format(psycopg.sql.Identifier(name))
        )
        conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    return cluster.dsn_for(name)


def write_config(path: Path, db1: str, db2: str, pool: dict[str, Any]) -> Path:
    """An intake.yaml for one pool (its pool_id defaults to POOL) on the given databases."""
    document = {
        "db1": {"dsn": db1},
        "db2": {"dsn": db2, "install_example_ledger": True},
        "pools": [{"pool_id": POOL, **pool}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def archived_count(dsn: str) -> int:
    with open_sync(dsn) as conn:
        row = conn.execute(queries("bench_drain")["archived"]).fetchone()
    return int(row[0]) if row else 0


def claimed_event(
    workdir: Path, clusters: dict[str, Cluster], name: str, webhook_url: str, intents: int
) -> Path:
    """A fresh DB1 and DB2 database pair provisioned by `intake up`, every unit
    of its pool claimed by a distinct buyer; returns its intake.yaml."""
    db1 = fresh_database(clusters["db1"], f"{name}_db1")
    db2 = fresh_database(clusters["db2"], f"{name}_db2")
    pool = {"inventory": intents, "batch_size": 500, "validation_webhook_url": webhook_url}
    path = write_config(workdir / f"{name}.yaml", db1, db2, pool)
    lifecycle.up(config.load(path))
    buyers = [f"buyer-{i}" for i in range(intents)]
    asyncio.run(claims.burst(db1, POOL, buyers, concurrency=64))
    return path


def db1_dsn(path: Path) -> str:
    return str(yaml.safe_load(path.read_text())["db1"]["dsn"])


def intake_argv(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "intake_cli", "-c", str(path), *args]


@contextmanager
def serving(path: Path, log: IO[bytes] | None = None) -> Iterator[tuple[int, str]]:
    """`intake serve` on a free port with TOKEN, answering; yields (its pid, its URL)."""
    port = free_port()
    output = log if log is not None else subprocess.DEVNULL
    server = subprocess.Popen(
        intake_argv(path, "serve", "--port", str(port)),
        stdout=output,
        stderr=output,
        env={**os.environ, "INTAKE_ADMIN_TOKEN": TOKEN},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_answering(url, server)
        yield server.pid, url
    finally:
        server.terminate()
        server.wait(timeout=STOP_S)


def _wait_answering(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("intake serve exited at start")
        try:
            httpx.get(url + "/api/openapi.json", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"intake serve did not answer in {START_S:.0f} s")


def drain_until_archived(
    path: Path, intents: int, concurrency: int, on_done: Callable[[], None] | None = None
) -> float:
    """Seconds one `intake drain` worker takes to archive `intents` messages.

    `on_done` runs the moment they are, before the worker is stopped (a
    benchmark reads its CPU counters there).
    """
    db1 = db1_dsn(path)
    started = time.perf_counter()
    worker = subprocess.Popen(
        intake_argv(path, "drain", "--log-level", "error", "--concurrency", str(concurrency)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while archived_count(db1) < intents:
            if worker.poll() is not None:
                raise RuntimeError("the drain worker exited early")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if on_done is not None:
            on_done()
        return seconds
    finally:
        worker.terminate()
        worker.wait(timeout=STOP_S)
