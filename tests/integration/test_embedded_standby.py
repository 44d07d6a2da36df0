"""DB1's embedded synchronous standby: made by `up`, promoted when DB1's host
is lost, removed by `down`. Real clusters from the installed binaries."""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from intake_cli.engine import lifecycle
from intake_cli.platform import config, standby
from intake_cli.platform.config import EmbeddedSettings, Settings
from intake_cli.platform.db import endpoints
from intake_cli.platform.embedded import STANDBY, Cluster, EmbeddedClusters
from intake_cli.platform.errors import EmbeddedClusterError
from tests.conftest import pool_spec

# Small clusters: the tests check behaviour, not throughput.
SMALL = {"shared_buffers": "32MB", "max_connections": 40}
PLAIN = EmbeddedSettings(shared_buffers="32MB", max_connections=40)
WITH_STANDBY = replace(PLAIN, standby=True)


def _replayed(conn: psycopg.Connection) -> bool:
    try:
        return bool(conn.execute("select count(*) from standby_probe").fetchone()[0])
    except psycopg.errors.UndefinedTable:
        return False


def settings_in(directory: Path, **embedded: object) -> Settings:
    directory.mkdir(mode=0o755)
    data = {"pools": [pool_spec("sb", 10)], "embedded": {**SMALL, **embedded}}
    return config.parse(data, directory / "intake.yaml")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def what_up_left(state_dir: Path) -> dict[str, object]:
    """Everything a second `up` must leave as it was: records, configs, postmasters."""
    clusters = json.loads((state_dir / "clusters.json").read_text())
    seen: dict[str, object] = {"clusters": clusters}
    for spec in clusters.values():
        datadir = Path(spec["datadir"])
        for name in ("postgresql.auto.conf", "pg_hba.conf", "postmaster.pid"):
            seen[f"{datadir.name}/{name}"] = (datadir / name).read_text()
    return seen


@pytest.mark.slow
def test_up_streams_synchronously_and_a_lost_db1_fails_over(workdir: Path):
    settings = settings_in(workdir / "standby-event", standby=True)
    state_dir = settings.state_dir
    lifecycle.up(settings)
    clusters = EmbeddedClusters(state_dir).load()
    primary, replica = clusters["db1"], clusters[STANDBY]
    assert Path(replica.datadir) == state_dir / "db1-standby"
    dsn = endpoints(settings).db1
    assert "target_session_attrs=read-write" in dsn

    with psycopg.connect(dsn, autocommit=True) as conn:
        seen = standby.replication_state(conn)
        assert seen.verdict == "synchronous"
        assert seen.synchronous_standby_names == "FIRST 1 (db1_standby)"
        assert [(s.application_name, s.state, s.sync_state) for s in seen.standbys] == [
            ("db1_standby", "streaming", "sync")
        ]
        conn.execute("create role unseeing")
        conn.execute("create table standby_probe (n int)")
        conn.execute("insert into standby_probe values (1)")
        committed = conn.execute("select pg_current_wal_insert_lsn()").fetchone()[0]

    with psycopg.connect(dsn, autocommit=True) as conn:
        # Without pg_read_all_stats the rows are there, their columns are not.
        conn.execute("set role unseeing")
        unseen = standby.replication_state(conn)
        assert unseen.verdict == "unknown" and len(unseen.standbys) == 1

    with psycopg.connect(replica.dsn, autocommit=True) as conn:
        # synchronous_commit = on: flushed on the standby before the commit returned.
        flushed = conn.execute(
            "select pg_wal_lsn_diff(pg_last_wal_receive_lsn(), %s) >= 0", (committed,)
        ).fetchone()[0]
        assert flushed
        # Replay follows the flush by moments (longer on a loaded machine:
        # until then even the table is not there).
        deadline = time.monotonic() + 10
        while not _replayed(conn):
            assert time.monotonic() < deadline, "the row never reached the standby"
            time.sleep(0.02)

    before = what_up_left(state_dir)
    lifecycle.up(settings)
    assert what_up_left(state_dir) == before

    promoted = standby.promote(state_dir, how="kill", lose_host=True)
    assert not Path(primary.datadir).exists()
    assert (promoted.old_port, promoted.new_port) == (primary.port, replica.port)
    assert 0 < promoted.promote_s <= promoted.total_s < 30

    # The DSN intake gave out before the loss reaches the new primary...
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        port, in_recovery = conn.execute(
            "select inet_server_port(), pg_is_in_recovery()"
        ).fetchone()
        assert (port, in_recovery) == (replica.port, False)
        # ...whose commits wait for nobody (a wait would hit the timeout).
        conn.execute("set statement_timeout = '3s'")
        started = time.monotonic()
        conn.execute("insert into standby_probe values (2)")
        assert time.monotonic() - started < 2
        assert standby.replication_state(conn).verdict == "none"
        assert conn.execute("select count(*) from standby_probe").fetchone()[0] == 2
    # ...and so does the one intake builds now, from clusters.json.
    assert EmbeddedClusters(state_dir).load() == {
        "db1": Cluster("db1", replica.datadir, replica.port),
        "db2": clusters["db2"],
    }
    with psycopg.connect(endpoints(settings).db1, autocommit=True) as conn:
        assert conn.execute("select inet_server_port()").fetchone()[0] == replica.port

    report = lifecycle.down(settings, force=True)
    assert report.stopped_embedded and report.left_in_state_dir == []
    assert not state_dir.exists()
    assert not any(port_open(c.port) for c in clusters.values())


@pytest.mark.slow
def test_the_key_turned_on_later_adds_a_standby_and_off_removes_it(workdir: Path):
    state_dir = workdir / "later" / ".intake"
    state_dir.parent.mkdir(mode=0o755)
    plain = EmbeddedClusters(state_dir, PLAIN)
    with_standby = EmbeddedClusters(state_dir, WITH_STANDBY)
    try:
        db1 = plain.ensure(("db1",))["db1"]
        with psycopg.connect(db1.dsn, autocommit=True) as conn:
            conn.execute("create table kept (n int)")
            conn.execute("insert into kept values (1)")
        clusters = standby.ensure_standby(with_standby)
        assert set(clusters) == {"db1", STANDBY} and clusters["db1"] == db1
        with psycopg.connect(clusters[STANDBY].dsn, autocommit=True) as conn:
            assert conn.execute("select count(*) from kept").fetchone()[0] == 1

        # A lost DB1 with a standby recorded: promote, never an empty DB1.
        with_standby.halt(("db1",))
        shutil.rmtree(db1.datadir)
        with pytest.raises(EmbeddedClusterError, match="promote the standby"):
            with_standby.ensure(("db1",))
        promoted = standby.promote(with_standby)  # DB1 is down already
        assert promoted.new_port == clusters[STANDBY].port

        # After a promotion, `up` makes the next standby where DB1 was.
        again = standby.ensure_standby(with_standby)
        assert Path(again[STANDBY].datadir) == Path(db1.datadir)
        assert standby.ensure_standby(plain) == {"db1": again["db1"]}
        assert not Path(db1.datadir).exists() and not port_open(again[STANDBY].port)
        with psycopg.connect(again["db1"].dsn, autocommit=True) as conn:
            conn.execute("set statement_timeout = '3s'")
            conn.execute("insert into kept values (2)")  # waits for nobody
    finally:
        plain.stop()
    assert not state_dir.exists()


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        ([], "none"),
        (["sync"], "synchronous"),
        (["quorum", "quorum"], "synchronous"),
        (["async"], "asynchronous"),
        (["potential"], "asynchronous"),
        (["sync", "potential"], "asynchronous"),
        (["sync", "async"], "asynchronous"),
        ([None], "unknown"),
        (["sync", None], "unknown"),
    ],
)
def test_the_verdict_on_standby_sync_states(states, verdict):
    assert standby.verdict_of(states) == verdict
