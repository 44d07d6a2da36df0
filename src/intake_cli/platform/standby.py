"""DB1's synchronous streaming standby: made, watched, and promoted.

With `embedded.standby`, `intake up` gives the embedded DB1 a standby on the
same machine (`pg_basebackup -R -X stream`, its own port and directory), and
DB1's commits wait until the standby has flushed them (`synchronous_commit =
on`, `synchronous_standby_names = 'FIRST 1 (db1_standby)'`): whatever DB1
acknowledged is on the standby when DB1's host is lost. `promote` is that
loss, on purpose, so an operator can try failover before trusting it.

The standby streams as `intake_replicator`, a role that may replicate and
do nothing else (pg_hba.conf). Its password is generated here, reaches the
server only as a SCRAM verifier, and is kept in a libpq passfile (0600)
owned by the server's account, because the standby's walreceiver reads it;
it is never in argv, a DSN or clusters.json.

`replication_state` reads any DB1 (embedded or not) and says whether its
commits wait for a standby.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from intake_cli.platform.embedded import (
    DB1_DIRECTORIES,
    REPLICATION_PASSFILE,
    REPLICATOR,
    STANDBY,
    STANDBY_APPLICATION,
    Cluster,
    EmbeddedClusters,
    _run,
    _server_account,
    _write_private,
    free_port,
    pg_bindir,
    pg_cron_available,
)
from intake_cli.platform.errors import EmbeddedClusterError
from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries


def _q(name: str) -> str:
    return queries("replication")[name]


Verdict = Literal["none", "synchronous", "asynchronous", "unknown"]
StopHow = Literal["immediate", "kill"]
SYNC_NAMES = f"FIRST 1 ({STANDBY_APPLICATION})"
# What pg_stat_replication calls a standby whose flush a commit waits for.
_WAITED_FOR = {"sync", "quorum"}

# -- what a DB1 says about its standbys (any DB1) ------------------------------


@dataclass(frozen=True)
class StandbyInfo:
    """One row of pg_stat_replication; None where this role may not see it."""

    application_name: str | None
    state: str | None
    sync_state: str | None
    flush_lag_bytes: int | None
    replay_lag_bytes: int | None


@dataclass(frozen=True)
class ReplicationState:
    in_recovery: bool | None
    synchronous_standby_names: str | None
    standbys: tuple[StandbyInfo, ...]
    # none: no standby connected; synchronous: every connected standby is
    # waited for; asynchronous: one or more is not (a promotion could lose
    # acknowledged commits); unknown: this role may not see.
    verdict: Verdict


def verdict_of(sync_states: Iterable[str | None]) -> Verdict:
    """The verdict on the connected standbys' sync_state values.

    Mixed is asynchronous: promoting the standby that was not waited for
    would lose what the others acknowledged.
    """
    states = list(sync_states)
    if not states:
        return "none"
    if any(state is None for state in states):
        return "unknown"
    if all(state in _WAITED_FOR for state in states):
        return "synchronous"
    return "asynchronous"


def replication_state(conn: psycopg.Connection) -> ReplicationState:
    """Read pg_stat_replication and synchronous_standby_names on a DB1 connection.

    A role without pg_read_all_stats sees the rows but not their columns:
    the verdict is then "unknown", never an exception.
    """
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            node = cur.execute(_q("node")).fetchone()
            rows = cur.execute(_q("standbys")).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return ReplicationState(None, None, (), "unknown")
    assert node is not None
    standbys = tuple(StandbyInfo(**row) for row in rows)
    return ReplicationState(
        in_recovery=node["in_recovery"],
        synchronous_standby_names=node["sync_names"],
        standbys=standbys,
        verdict=verdict_of(s.sync_state for s in standbys),
    )


# -- the embedded standby --------------------------------------------------------


def _wait(what: str, done: Callable[[], bool], timeout_s: float, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            tail = ""
            if log and os.path.exists(log):
                lines = Path(log).read_text(errors="replace").strip().splitlines()[-3:]
                tail = "; server log: " + " | ".join(lines)
            raise EmbeddedClusterError(f"waited {timeout_s:.0f}s for {what}, in vain{tail}")
        time.sleep(0.05)


def _settings(cluster: Cluster, *names: str) -> dict[str, str]:
    with open_sync(cluster.dsn_for("postgres")) as conn:
        rows = conn.execute(
            "select name, setting from pg_settings where name = any(%s)", (list(names),)
        ).fetchall()
    return dict(rows)


def _sync_state(primary: Cluster) -> str | None:
    """The standby's sync_state on the primary once it streams, else None."""
    with open_sync(primary.dsn_for("postgres")) as conn:
        row = conn.execute(
            "select sync_state from pg_stat_replication"
            " where application_name = %s and state = 'streaming'",
            (STANDBY_APPLICATION,),
        ).fetchone()
    return None if row is None else str(row[0])


def _pg_ctl(clusters: EmbeddedClusters, action: str, cluster: Cluster, *extra: str) -> None:
    args = [str(pg_bindir() / "pg_ctl"), action, "-D", cluster.datadir, *extra]
    _run(args, _server_account(), f"{action} of {cluster.name}")


def _reconfigure_primary(
    clusters: EmbeddedClusters, primary: Cluster, *, sync_standby: bool
) -> None:
    """Make DB1 stream (a restart where it ran with minimal WAL), waiting or not
    for its standby."""
    live = _settings(primary, "wal_level", "max_wal_senders")
    clusters._configure(
        primary,
        _server_account(),
        pg_cron_available(pg_bindir()),
        replicated=True,
        sync_standby=sync_standby,
    )
    if live.get("wal_level") == "minimal" or live.get("max_wal_senders") == "0":
        # The standby key turned on for an existing DB1: WAL level needs a restart.
        _pg_ctl(clusters, "restart", primary, "-w", "-t", "60", "-m", "fast", "-l", primary.logfile)
    else:
        _pg_ctl(clusters, "reload", primary)


def _replicator_password(primary: Cluster) -> str:
    """A new password for the replicator role (created if missing) on DB1."""
    password = secrets.token_hex(24)
    with open_sync(primary.dsn_for("postgres")) as conn:
        # The SCRAM verifier is computed here: the password never reaches the server.
        verifier = conn.pgconn.encrypt_password(
            password.encode(), REPLICATOR.encode(), b"scram-sha-256"
        ).decode()
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (REPLICATOR,))
        statement = (
            "alter role {} with login replication password {}"
            if exists.fetchone()
            else "create role {} with login replication password {}"
        )
        conn.execute(sql.SQL(statement).format(sql.Identifier(REPLICATOR), sql.Literal(verifier)))
    return password


def _make_standby(clusters: EmbeddedClusters, primary: Cluster) -> Cluster:
    """Base-backup DB1 into the directory it does not use; record the standby."""
    account = _server_account()
    # Commits must not wait for a standby that is not there yet (the role
    # change below is one), so DB1 streams without waiting until it connects.
    _reconfigure_primary(clusters, primary, sync_standby=False)
    passfile = clusters.state_dir / REPLICATION_PASSFILE
    password = _replicator_password(primary)
    _write_private(
        passfile,
        f"# written by intake: the password DB1's standby streams with\n"
        f"127.0.0.1:{primary.port}:*:{REPLICATOR}:{password}\n",
        account,
    )
    directory = next(d for d in DB1_DIRECTORIES if d != Path(primary.datadir).name)
    datadir = clusters.state_dir / directory
    # A lost primary's directory, or an interrupted base backup: intake's own.
    clusters._fresh_datadir(datadir, account)
    conninfo = make_conninfo(
        "",
        host="127.0.0.1",
        port=primary.port,
        user=REPLICATOR,
        passfile=str(passfile),
        application_name=STANDBY_APPLICATION,
    )
    _run(
        [
            str(pg_bindir() / "pg_basebackup"),
            "-D",
            str(datadir),
            "-d",
            conninfo,
            "-X",
            "stream",
            "-R",
            # An immediate checkpoint: a spread one could take checkpoint_timeout.
            "--checkpoint=fast",
            # As initdb here: an embedded cluster is for trying, not for an OS crash.
            "--no-sync",
        ],
        account,
        "pg_basebackup of DB1 for its standby",
    )
    standby = Cluster(name=STANDBY, datadir=str(datadir), port=free_port())
    # The standby is a copy of DB1: intake's role has DB1's password there.
    clusters._remember(standby.port, clusters._passwords()[primary.port])
    clusters._configure(
        standby,
        account,
        pg_cron_available(pg_bindir()),
        replicated=True,
        sync_standby=True,
        primary_conninfo=conninfo,
    )
    state = clusters.load()
    state[STANDBY] = standby
    clusters._save(state)
    return standby


def start_standby(clusters: EmbeddedClusters, *, timeout_s: float = 60) -> dict[str, Cluster]:
    """Give the embedded DB1 its synchronous standby; leave a running one alone.

    Made when missing (the key just turned on, or after a promotion), started
    when stopped; returns when DB1's commits wait for it. Returns the clusters.
    """
    bindir = pg_bindir()
    account = _server_account()
    with clusters.locked():
        state = clusters.load()
        primary = state.get("db1")
        if primary is None:
            raise EmbeddedClusterError("DB1's standby needs the embedded DB1: start it first")
        standby = state.get(STANDBY)
        if standby is None or not (Path(standby.datadir) / "PG_VERSION").exists():
            standby = _make_standby(clusters, primary)
        if not clusters.running(standby, bindir, account):
            clusters._start(standby, bindir, account)
        _wait(
            "DB1's standby to stream",
            lambda: _sync_state(primary) is not None,
            timeout_s,
            standby.logfile,
        )
        live = _settings(primary, "synchronous_standby_names")
        if live.get("synchronous_standby_names") != SYNC_NAMES:
            _reconfigure_primary(clusters, primary, sync_standby=True)
        _wait("DB1 to wait for its standby", lambda: _sync_state(primary) == "sync", timeout_s)
        return clusters.load()


def remove_standby(clusters: EmbeddedClusters) -> bool:
    """Stop and remove DB1's standby (the key turned off); True if there was one.

    DB1 stops waiting for it first; its WAL level stays until its next restart.
    """
    with clusters.locked(create=False) as ours:
        state = clusters.load() if ours else {}
        standby = state.pop(STANDBY, None)
        if standby is None:
            return False
        primary = state["db1"]
        clusters._configure(primary, _server_account(), pg_cron_available(pg_bindir()))
        _pg_ctl(clusters, "reload", primary)
        clusters.halt((STANDBY,))
        shutil.rmtree(standby.datadir, ignore_errors=True)
        clusters._save(state)
        clusters._forget(standby.port)
        (clusters.state_dir / REPLICATION_PASSFILE).unlink(missing_ok=True)
        return True


def ensure_standby(clusters: EmbeddedClusters) -> dict[str, Cluster]:
    """What `intake up` does: DB1 has a standby exactly when the settings ask."""
    if clusters.options.standby:
        return start_standby(clusters)
    remove_standby(clusters)
    return clusters.load()


# -- promotion: DB1's host lost, on purpose --------------------------------------


@dataclass(frozen=True)
class Promotion:
    old_port: int
    new_port: int
    how: StopHow
    lost_host: bool
    # Seconds: DB1 stopped; the standby promoted (pg_ctl promote -w);
    # from the stop to a primary whose commits wait for nobody.
    stop_s: float
    promote_s: float
    total_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "old_port": self.old_port,
            "new_port": self.new_port,
            "how": self.how,
            "lost_host": self.lost_host,
            "stop_s": round(self.stop_s, 3),
            "promote_s": round(self.promote_s, 3),
            "total_s": round(self.total_s, 3),
        }


def _postmaster_pid(datadir: str) -> int | None:
    try:
        return int(Path(datadir, "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (nobody may reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _stop_primary(clusters: EmbeddedClusters, primary: Cluster, how: StopHow) -> None:
    """Stop DB1 as a crash would; a DB1 already down (its host lost) is left so."""
    if not (Path(primary.datadir) / "PG_VERSION").exists():
        return
    if how == "immediate":
        if not clusters.running(primary, pg_bindir(), _server_account()):
            return
        _pg_ctl(clusters, "stop", primary, "-w", "-t", "60", "-m", "immediate")
        return
    pid = _postmaster_pid(primary.datadir)
    if pid is None or _gone(pid):
        return
    os.kill(pid, signal.SIGKILL)
    _wait("DB1's postmaster to die", lambda: _gone(pid), 10)


def _lose(datadir: str) -> None:
    # Backends of a killed postmaster exit on their own, within moments:
    # one may still be closing a file while the first pass runs.
    for _ in range(50):
        shutil.rmtree(datadir, ignore_errors=True)
        if not os.path.exists(datadir):
            return
        time.sleep(0.1)
    raise EmbeddedClusterError(f"removing {datadir} failed: something still writes there")


def _stop_waiting(node: Cluster, timeout_s: float) -> None:
    """Clear an inherited synchronous_standby_names: the promoted node's commits
    must not wait for a standby that no longer exists."""
    with open_sync(node.dsn_for("postgres")) as conn:
        names = conn.execute("select current_setting('synchronous_standby_names')").fetchone()
        if names is None or not names[0]:
            return
        conn.execute("alter system reset synchronous_standby_names")
        conn.execute("select pg_reload_conf()")
    _wait(
        "the promoted DB1 to stop waiting for a standby",
        lambda: not _settings(node, "synchronous_standby_names")["synchronous_standby_names"],
        timeout_s,
    )


def promote(
    target: EmbeddedClusters | Path,
    *,
    how: StopHow = "immediate",
    lose_host: bool = False,
    timeout_s: float = 60,
) -> Promotion:
    """Lose DB1 and promote its standby: the standby becomes DB1 in clusters.json.

    how: "immediate" (pg_ctl stop -m immediate) or "kill" (SIGKILL to the
    postmaster). lose_host also removes DB1's data directory, as a lost host
    would. The old DB1, when kept, is no longer recorded: it is never started
    again, and the next standby is made over it.
    """
    clusters = target if isinstance(target, EmbeddedClusters) else EmbeddedClusters(Path(target))
    with clusters.locked(create=False) as ours:
        state = clusters.load() if ours else {}
        primary, standby = state.get("db1"), state.get(STANDBY)
        if primary is None or standby is None:
            raise EmbeddedClusterError(
                f"no embedded DB1 with a standby under {clusters.state_dir}: set "
                "embedded.standby: true and run `intake up` first"
            )
        began = time.monotonic()
        _stop_primary(clusters, primary, how)
        stopped = time.monotonic()
        if lose_host:
            _lose(primary.datadir)
        before_promote = time.monotonic()
        _pg_ctl(clusters, "promote", standby, "-w", "-t", str(int(timeout_s)))
        promoted = time.monotonic()
        # Recorded at once: from here on every DSN intake builds for DB1 is
        # the new primary's.
        del state[STANDBY]
        state["db1"] = Cluster(name="db1", datadir=standby.datadir, port=standby.port)
        clusters._save(state)
        clusters._forget(primary.port)
        # Only a standby streams with it; the next one gets a new password.
        (clusters.state_dir / REPLICATION_PASSFILE).unlink(missing_ok=True)
        _stop_waiting(state["db1"], timeout_s)
        done = time.monotonic()
    return Promotion(
        old_port=primary.port,
        new_port=standby.port,
        how=how,
        lost_host=lose_host,
        stop_s=stopped - began,
        promote_s=promoted - before_promote,
        total_s=done - began,
    )
