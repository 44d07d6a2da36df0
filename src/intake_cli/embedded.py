"""Local ephemeral PostgreSQL clusters for DB1 and DB2 (the embedded default).

Each cluster is an initdb'd data directory under the state directory, served
on a free loopback port with trust authentication (loopback only, no unix
socket: the cluster belongs to this one event and dies with `intake down`).
PostgreSQL refuses to run as root, so when intake runs as root the server
runs as an unprivileged system user (`postgres`, which Debian's package
creates) and the data directories are handed to it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from intake_cli.config import EmbeddedSettings
from intake_cli.errors import EmbeddedClusterError

SUPERUSER = "intake"
DATABASE = "intake"
STATE_FILE = "clusters.json"
SERVER_USER = os.environ.get("INTAKE_PG_USER", "postgres")


@dataclass(frozen=True)
class Cluster:
    name: str
    datadir: str
    port: int

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={DATABASE}"

    @property
    def logfile(self) -> str:
        return str(Path(self.datadir).parent / f"{self.name}.log")


def pg_bindir() -> Path:
    """Where initdb, pg_ctl and postgres live: $INTAKE_PG_BIN, pg_config, or PATH."""
    override = os.environ.get("INTAKE_PG_BIN")
    if override:
        return Path(override)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise EmbeddedClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: install PostgreSQL "
        "(Debian: apt-get install postgresql-15) or set INTAKE_PG_BIN, "
        "or configure db1.dsn / db2.dsn to use existing servers"
    )


def pg_major(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1].split(".")[0])


def pg_cron_available(bindir: Path) -> bool:
    sharedir = (
        subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True
        ).stdout.strip()
        if (bindir / "pg_config").exists()
        else ""
    )
    candidates = [Path(sharedir)] if sharedir else []
    candidates.append(Path(f"/usr/share/postgresql/{pg_major(bindir)}"))
    return any((c / "extension" / "pg_cron.control").exists() for c in candidates)


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise EmbeddedClusterError(
            f"running as root, and PostgreSQL refuses to: intake runs the server as the "
            f"unprivileged user '{SERVER_USER}', which does not exist. Create it "
            f"(useradd --system {SERVER_USER}) or set INTAKE_PG_USER to another user"
        ) from None


def _check_reachable(path: Path, account: pwd.struct_passwd) -> None:
    """The server user must be able to walk down to its data directory."""
    for parent in [*reversed(path.parents)]:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != account.pw_uid and not mode & 0o001:
            raise EmbeddedClusterError(
                f"the server runs as '{account.pw_name}', which cannot enter {parent} "
                f"(mode {oct(mode & 0o777)}): choose a state_dir under a directory others "
                "may traverse, or chmod o+x that directory"
            )


def _as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a command as the server's account."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(args: list[str], account: pwd.struct_passwd | None, what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd="/", **_as(account))
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise EmbeddedClusterError(f"{what} failed: " + " | ".join(detail))
    return proc.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings_for(name: str, port: int, options: EmbeddedSettings, with_cron: bool) -> str:
    lines = [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        "unix_socket_directories = ''",
        f"max_connections = {options.max_connections}",
        f"shared_buffers = '{options.shared_buffers}'",
        f"max_locks_per_transaction = {options.max_locks_per_transaction}",
        f"synchronous_commit = {'on' if options.synchronous_commit else 'off'}",
        # Nothing replicates from an event cluster: minimal WAL makes seeding
        # and queue churn cheaper without weakening crash safety.
        "wal_level = minimal",
        "max_wal_senders = 0",
        "max_wal_size = '2GB'",
        "checkpoint_timeout = '15min'",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] '",
    ]
    if name == "db1":
        # A claim holds a unit lock for microseconds: fail a stuck claim
        # quickly rather than let the herd pile up behind it.
        lines.append("lock_timeout = '5s'")
        if with_cron:
            lines += [
                "shared_preload_libraries = 'pg_cron'",
                f"cron.database_name = '{DATABASE}'",
                # No unix socket here, and "localhost" may resolve to ::1,
                # where nothing listens.
                "cron.host = '127.0.0.1'",
            ]
    return "\n".join(["# written by intake", *lines, ""])


class EmbeddedClusters:
    """The pair of clusters under one state directory."""

    def __init__(self, state_dir: Path, options: EmbeddedSettings | None = None) -> None:
        self.state_dir = state_dir
        self.options = options or EmbeddedSettings()
        self.state_path = state_dir / STATE_FILE

    # -- state -----------------------------------------------------------------

    def load(self) -> dict[str, Cluster]:
        if not self.state_path.exists():
            return {}
        data = json.loads(self.state_path.read_text())
        return {name: Cluster(**spec) for name, spec in data.items()}

    def _save(self, clusters: dict[str, Cluster]) -> None:
        self.state_path.write_text(
            json.dumps({name: asdict(c) for name, c in clusters.items()}, indent=2) + "\n"
        )

    # -- lifecycle -------------------------------------------------------------

    def ensure(self, names: tuple[str, ...] = ("db1", "db2")) -> dict[str, Cluster]:
        """Initialise and start what is missing; leave running clusters alone."""
        bindir = pg_bindir()
        account = _server_account()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if account is not None:
            _check_reachable(self.state_dir, account)
        clusters = self.load()
        with_cron = pg_cron_available(bindir)
        for name in names:
            cluster = clusters.get(name)
            if cluster is None or not (Path(cluster.datadir) / "PG_VERSION").exists():
                cluster = self._init(name, bindir, account, with_cron)
                clusters[name] = cluster
                self._save(clusters)
            if not self.running(cluster, bindir, account):
                self._start(cluster, bindir, account)
        return clusters

    def _init(
        self, name: str, bindir: Path, account: pwd.struct_passwd | None, with_cron: bool
    ) -> Cluster:
        datadir = self.state_dir / name
        if datadir.exists():
            shutil.rmtree(datadir)
        datadir.mkdir(mode=0o700)
        if account is not None:
            os.chown(datadir, account.pw_uid, account.pw_gid)
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            account,
            f"initdb for {name}",
        )
        port = free_port()
        conf = datadir / "postgresql.auto.conf"
        conf.write_text(_settings_for(name, port, self.options, with_cron))
        if account is not None:
            os.chown(conf, account.pw_uid, account.pw_gid)
        return Cluster(name=name, datadir=str(datadir), port=port)

    def running(self, cluster: Cluster, bindir: Path, account: pwd.struct_passwd | None) -> bool:
        args = [str(bindir / "pg_ctl"), "status", "-D", cluster.datadir]
        proc = subprocess.run(args, capture_output=True, cwd="/", **_as(account))
        return proc.returncode == 0

    def _start(self, cluster: Cluster, bindir: Path, account: pwd.struct_passwd | None) -> None:
        log = Path(cluster.logfile)
        log.touch()
        if account is not None:
            os.chown(log, account.pw_uid, account.pw_gid)
        try:
            _run(
                [
                    str(bindir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    cluster.datadir,
                    "-l",
                    str(log),
                ],
                account,
                f"starting {cluster.name}",
            )
        except EmbeddedClusterError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise EmbeddedClusterError(f"{exc}; server log: {' | '.join(tail)}") from None
        self._create_database(cluster, bindir, account)

    def _create_database(
        self, cluster: Cluster, bindir: Path, account: pwd.struct_passwd | None
    ) -> None:
        psql = [
            str(bindir / "psql"),
            "-X",
            "-q",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
        ]
        exists = _run(
            [*psql, "-c", f"select 1 from pg_database where datname = '{DATABASE}'"],
            account,
            f"checking {cluster.name}",
        )
        if not exists.strip():
            _run([*psql, "-c", f"create database {DATABASE}"], account, f"creating {DATABASE}")

    def halt(self, names: tuple[str, ...] = ("db1", "db2")) -> None:
        """Stop clusters but keep their data (`ensure` starts them again)."""
        clusters = self.load()
        bindir = pg_bindir()
        account = _server_account()
        for name in names:
            cluster = clusters.get(name)
            if cluster is None or not Path(cluster.datadir).exists():
                continue
            if self.running(cluster, bindir, account):
                stop = ["stop", "-w", "-t", "60", "-m", "fast", "-D", cluster.datadir]
                _run([str(bindir / "pg_ctl"), *stop], account, f"stopping {cluster.name}")

    def stop(self) -> None:
        """Stop every cluster and remove the state directory."""
        clusters = self.load()
        if clusters:
            self.halt(tuple(clusters))
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
