"""DB1 under Patroni, for the test that loses DB1's host: one etcd and two
Patroni nodes on loopback, free ports, everything in a temporary directory
and everything stopped afterwards, whatever happened.

Debian's packages (scripts/test-deps.sh installs them): etcd 3.4 from
etcd-server and Patroni 3.0. Patroni talks to etcd through its `etcd3`
client (etcd's v3 API, through etcd's JSON gateway): since 3.4 etcd serves
the v2 API only when started with --enable-v2, and v2 is the old API.

PostgreSQL refuses to run as root, so Patroni (which runs PostgreSQL) and
etcd run as the unprivileged server account, as the embedded clusters do.
The superuser's and the replicator's passwords reach Patroni only through
its YAML (0600, owned by that account) and intake only through a libpq
passfile (0600, owned by whoever runs the tests): never argv, a DSN or a log.
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from intake_cli.platform.embedded import (
    _as,
    _server_account,
    _write_private,
    free_port,
    pg_bindir,
)
from tests.acceptance.crash_support import _children, _reap_orphans, _running

SUPERUSER = "intake"
DATABASE = "intake"
REPLICATOR = "replicator"
SCOPE = "intake-db1"
# Failover in seconds, not Patroni's default half-minute: a dead leader's key
# expires after `ttl`, and the survivor looks every `loop_wait`. Patroni's
# rule is ttl >= loop_wait + 2 * retry_timeout (1 + 2 * 3 = 7 <= 10), so a
# leader whose etcd calls stall for a retry_timeout still renews in time.
DCS = {"ttl": 10, "loop_wait": 1, "retry_timeout": 3}
# What Patroni calls a node in /cluster.
LEADER = "leader"
SYNC_STANDBY = "sync_standby"


def missing() -> str | None:
    """Why the Patroni tests cannot run here (patroni or etcd not installed), or None."""
    absent = [name for name in ("patroni", "etcd") if shutil.which(name) is None]
    if not absent:
        return None
    return (
        f"{' and '.join(absent)} not installed "
        "(scripts/test-deps.sh installs Debian's patroni and etcd-server as root)"
    )


@dataclass
class Node:
    name: str
    pg_port: int
    api_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def config(self) -> Path:
        return self.directory / "patroni.yaml"

    @property
    def log(self) -> Path:
        return self.directory / "patroni.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        return None


@dataclass
class Lost:
    """A leader whose host is gone: `at` is time.monotonic() at the first SIGKILL."""

    node: Node
    at: float


@dataclass
class PatroniDB1:
    """Two Patroni nodes of one PostgreSQL cluster, for intake's DB1."""

    nodes: list[Node]
    dsn: str
    passfile: Path
    # Seconds: bootstrap (start to a sync standby), promotion (loss to a new
    # leader that accepts writes); `lost_at` is a time.monotonic() stamp.
    timings: dict[str, float] = field(default_factory=dict)
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=2.0))

    @property
    def ports(self) -> tuple[int, int]:
        return (self.nodes[0].pg_port, self.nodes[1].pg_port)

    def node_dsn(self, node: Node, dbname: str = DATABASE) -> str:
        """One node alone (read-only while it is a standby)."""
        return make_conninfo(
            "",
            host="127.0.0.1",
            port=node.pg_port,
            dbname=dbname,
            user=SUPERUSER,
            passfile=str(self.passfile),
            connect_timeout=3,
        )

    def members(self) -> list[dict[str, Any]]:
        """Patroni's /cluster, from the first node whose REST API answers."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                return list(self._http.get(f"{node.api}/cluster").json().get("members", []))
        return []

    def _node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def leader(self) -> Node | None:
        """The node Patroni runs as the read-write primary, if any."""
        for member in self.members():
            if member.get("role") == LEADER and member.get("state") == "running":
                node = self._node(member["name"])
                # Its own word too: /primary answers 200 only on the lock holder.
                with contextlib.suppress(httpx.HTTPError):
                    if self._http.get(f"{node.api}/primary").status_code == 200:
                        return node
        return None

    def sync_standby(self) -> Node | None:
        for member in self.members():
            if member.get("role") == SYNC_STANDBY and member.get("state") in (
                "running",
                "streaming",
            ):
                return self._node(member["name"])
        return None

    def wait_for_sync_standby(self, timeout: float = 60) -> tuple[Node, Node]:
        """(leader, sync standby) once the leader's commits wait for the standby:
        Patroni lists it as sync_standby and the leader's pg_stat_replication says
        `sync`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader, standby = self.leader(), self.sync_standby()
            if leader is not None and standby is not None:
                with (
                    contextlib.suppress(psycopg.Error),
                    psycopg.connect(self.node_dsn(leader), autocommit=True) as conn,
                ):
                    row = conn.execute(
                        "select sync_state from pg_stat_replication where application_name = %s",
                        (standby.name,),
                    ).fetchone()
                    if row is not None and row[0] == "sync":
                        return leader, standby
            time.sleep(0.2)
        raise AssertionError(
            f"no synchronous standby after {timeout} s: {self.members()}\n{self.log_tails()}"
        )

    def lose_leader(self) -> Lost:
        """The leader's host is gone: its Patroni and its postmaster SIGKILLed (no
        demotion, no handover, no last words to etcd), its backends gone with
        it, its data directory removed."""
        leader = self.leader()
        assert leader is not None and leader.proc is not None, "no leader to lose"
        pid = leader.postmaster_pid()
        backends = _children(pid) if pid else []
        at = time.monotonic()
        leader.proc.kill()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leader.proc.wait(timeout=30)
        _wait_gone(pid)
        _reap_orphans(backends)
        shutil.rmtree(leader.datadir)
        self.timings["lost_at"] = at
        return Lost(leader, at)

    def wait_for_promotion(self, lost: Lost, timeout: float = 60) -> Node:
        """The survivor, once it leads and accepts writes; records `promoted_s`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not lost.node:
                with (
                    contextlib.suppress(psycopg.Error),
                    psycopg.connect(self.node_dsn(leader), autocommit=True) as conn,
                ):
                    if not conn.execute("select pg_is_in_recovery()").fetchone()[0]:
                        self.timings["promoted_s"] = time.monotonic() - lost.at
                        return leader
            time.sleep(0.05)
        raise AssertionError(
            f"no promotion {timeout} s after the loss: {self.members()}\n{self.log_tails()}"
        )

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of each Patroni log (PostgreSQL's stderr included)."""
        out = []
        for node in self.nodes:
            with contextlib.suppress(OSError):
                text = node.log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {node.name} ---\n" + "\n".join(text))
        return "\n".join(out)


def _wait_gone(pid: int | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _private_dir(path: Path, account: pwd.struct_passwd | None) -> Path:
    path.mkdir(mode=0o700)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def _cron_parameters(bindir: Path) -> dict[str, Any]:
    """pg_cron where Debian's postgresql-15-cron is installed (intake works without it)."""
    libdir = subprocess.run(
        [str(bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True
    ).stdout.strip()
    if not libdir or not (Path(libdir) / "pg_cron.so").exists():
        return {}
    return {
        "shared_preload_libraries": "pg_cron",
        "cron.database_name": DATABASE,
        # Jobs in background workers: the server account has no passfile.
        "cron.use_background_workers": "on",
        "max_worker_processes": 16,
    }


def _node_config(
    node: Node,
    etcd_port: int,
    passwords: dict[str, str],
    post_bootstrap: Path,
    bindir: Path,
) -> dict[str, Any]:
    superuser = {"username": SUPERUSER, "password": passwords[SUPERUSER]}
    return {
        "scope": SCOPE,
        "namespace": "/intake-test/",
        "name": node.name,
        "restapi": {
            "listen": f"127.0.0.1:{node.api_port}",
            "connect_address": f"127.0.0.1:{node.api_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                **DCS,
                "maximum_lag_on_failover": 1024 * 1024,
                # Only the synchronous standby may be promoted, and the
                # leader's commits wait for it (synchronous_commit = on): what
                # a buyer was told is on the survivor when the host is lost.
                "synchronous_mode": True,
                # Strict would refuse every commit while no standby is in sync
                # (synchronous_standby_names = '*'): after this very loss the
                # lone survivor could take no claim at all. Not strict, the
                # leader commits alone until a standby returns (and only a node
                # that was in sync may be promoted).
                "synchronous_mode_strict": False,
                "postgresql": {
                    "use_pg_rewind": False,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "wal_keep_size": "256MB",
                        "synchronous_commit": "on",
                        "password_encryption": "scram-sha-256",
                        # The herd, two workers, their claims of pg_cron and Patroni.
                        "max_connections": 200,
                        "shared_buffers": "64MB",
                        # As intake's embedded DB1: a stuck claim fails fast.
                        "lock_timeout": "5s",
                        **_cron_parameters(bindir),
                    },
                },
            },
            "initdb": [
                {"encoding": "UTF8"},
                {"auth-host": "scram-sha-256"},
                {"auth-local": "scram-sha-256"},
            ],
            "post_bootstrap": str(post_bootstrap),
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.pg_port}",
            "connect_address": f"127.0.0.1:{node.pg_port}",
            "data_dir": str(node.datadir),
            "bin_dir": str(bindir),
            "pgpass": str(node.directory / "pgpass"),
            # A replica is cloned at once: pg_basebackup's default spread
            # checkpoint would take most of checkpoint_timeout.
            "basebackup": [{"checkpoint": "fast"}],
            "authentication": {
                "superuser": superuser,
                "rewind": superuser,
                "replication": {"username": REPLICATOR, "password": passwords[REPLICATOR]},
            },
            "parameters": {"unix_socket_directories": str(node.directory)},
            # Loopback only, every connection proves a password; the
            # replicator may replicate and do nothing else.
            "pg_hba": [
                f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256",
                f"host all {REPLICATOR} 127.0.0.1/32 reject",
                "host all all 127.0.0.1/32 scram-sha-256",
            ],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


def _etcd_env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    # etcd 3.4 runs on amd64 (and a few others) unless told the arch is fine.
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    if arch != "amd64":
        env["ETCD_UNSUPPORTED_ARCH"] = arch
    return env


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def _spawn(
    argv: list[str], log: Path, cwd: Path, env: dict[str, str], account: pwd.struct_passwd | None
) -> subprocess.Popen[bytes]:
    """A server as the server account, its output (stdout and stderr) in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env=env,
            **_as(account),
        )


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _postmasters(datadir: Path) -> list[int]:
    """Postmasters serving `datadir`, found by their command line: Patroni starts
    them detached (their parent is not Patroni), and one it was starting as it
    stopped has written no postmaster.pid yet."""
    wanted = f"-D\0{datadir}\0".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if wanted in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _stop_node(node: Node) -> None:
    """Patroni stops its PostgreSQL on SIGTERM; a postmaster that outlives it gets
    an immediate shutdown (which still removes its shared memory), then SIGKILL."""
    _stop(node.proc, timeout=20)
    for pid in _postmasters(node.datadir):
        backends = _children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        _wait_gone(pid, timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        _reap_orphans(backends)


@contextmanager
def patroni_db1(parent: Path, timeout: float = 90) -> Iterator[PatroniDB1]:
    """etcd and two Patroni nodes on loopback, the leader's commits waiting for
    a synchronous standby; yields once they do. Skips the test when patroni or
    etcd is not installed. `parent` must be a directory the server account can
    enter (the suite's workdir is)."""
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    account = _server_account()
    bindir = pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="patroni-", dir=parent))
    base.chmod(0o755)
    etcd: subprocess.Popen[bytes] | None = None
    nodes = [
        Node(name, free_port(), free_port(), _private_dir(base / name, account))
        for name in ("pg1", "pg2")
    ]
    passfile = base / "intake.pgpass"
    started = time.monotonic()
    try:
        passwords = {SUPERUSER: secrets.token_urlsafe(24), REPLICATOR: secrets.token_urlsafe(24)}
        _write_private(
            passfile,
            "".join(f"127.0.0.1:{n.pg_port}:*:{SUPERUSER}:{passwords[SUPERUSER]}\n" for n in nodes),
        )
        # Patroni runs it once, on the node that bootstraps, before any
        # replica is cloned; the connection string (no password) is $1.
        post_bootstrap = base / "post-bootstrap.sh"
        post_bootstrap.write_text(
            f'#!/bin/sh\nexec {bindir / "psql"} "$1" -v ON_ERROR_STOP=1 -qc '
            f"'create database {DATABASE}'\n"
        )
        post_bootstrap.chmod(0o755)

        etcd_dir = _private_dir(base / "etcd", account)
        client, peer = free_port(), free_port()
        etcd_log = base / "etcd.log"
        argv = [
            "etcd", "--name", "etcd0", "--data-dir", str(etcd_dir / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"etcd0=http://127.0.0.1:{peer}",
            "--log-level", "warn",
        ]  # fmt: skip
        etcd = _spawn(argv, etcd_log, etcd_dir, _etcd_env(), account)
        _wait_http(f"http://127.0.0.1:{client}/health", etcd, etcd_log, 30)

        home = {"HOME": "/nonexistent"} if account is None else {"HOME": account.pw_dir}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **home}
        for node in nodes:
            config = _node_config(node, client, passwords, post_bootstrap, bindir)
            _write_private(node.config, yaml.safe_dump(config, sort_keys=False), owner=account)
        for node in nodes:
            node.proc = _spawn(
                ["patroni", str(node.config)], node.log, node.directory, env, account
            )
        db1 = PatroniDB1(
            nodes,
            make_conninfo(
                "",
                host="127.0.0.1,127.0.0.1",
                port=",".join(str(n.pg_port) for n in nodes),
                dbname=DATABASE,
                user=SUPERUSER,
                passfile=str(passfile),
                target_session_attrs="read-write",
            ),
            passfile,
        )
        try:
            db1.wait_for_sync_standby(timeout)
            db1.timings["bootstrap_s"] = time.monotonic() - started
            yield db1
        except BaseException:
            print(db1.log_tails(), file=sys.stderr)
            raise
        finally:
            db1._http.close()
    finally:
        for node in nodes:
            _stop_node(node)
        _stop(etcd, timeout=10)
        shutil.rmtree(base, ignore_errors=True)
