"""Local ephemeral PostgreSQL clusters for DB1 and DB2 (the embedded default).

Each cluster is an initdb'd data directory under the state directory, served
on a free loopback port (loopback only, no unix socket: the cluster belongs
to this one event and dies with `intake down`). Every connection proves a
password (SCRAM) that intake generated and keeps in the state directory's
`pgpass`, a libpq passfile only the user running intake can read: another
user on the machine cannot connect, let alone as the superuser. DSNs name
the passfile (`passfile=`), never the password.

PostgreSQL refuses to run as root, so when intake runs as root the server
runs as an unprivileged system user (`postgres`, which Debian's package
creates) and the data directories are handed to it.

The state directory is intake's alone: a marker file claims it (and is the
lock that serialises `intake up` and `intake down`), a directory holding
other files and no marker is refused, and teardown removes only what intake
made there.

With `embedded.standby`, DB1 has a streaming standby here too (a third
cluster of the state directory, recorded in clusters.json as `db1-standby`;
platform/standby.py makes, watches and promotes it). DB1 and its standby take
turns in two directories, `db1` and `db1-standby`: after a promotion the
next standby is made in the directory the lost primary left.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from intake_cli import __version__
from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.errors import EmbeddedClusterError, StateDirRefused
from intake_cli.platform.pgconn import open_sync

SUPERUSER = "intake"
DATABASE = "intake"
STATE_FILE = "clusters.json"
SERVER_USER = os.environ.get("INTAKE_PG_USER", "postgres")
# Claims the directory for intake and is the lock `up` and `down` hold.
MARKER = ".intake-state"
# libpq passfile with the clusters' password: 0600, owned by intake's user.
PASSFILE = "pgpass"
CLUSTER_NAMES = ("db1", "db2")
# DB1's standby: its name in clusters.json, and the application_name that
# DB1's synchronous_standby_names waits for.
STANDBY = "db1-standby"
STANDBY_APPLICATION = "db1_standby"
# The directories DB1 and its standby take turns in.
DB1_DIRECTORIES = ("db1", STANDBY)
# The role the standby streams as: replication, and nothing else.
REPLICATOR = "intake_replicator"
# The replicator's passfile, owned by the server's account: the standby's
# walreceiver (and pg_basebackup) run as that account and must read it.
REPLICATION_PASSFILE = "replication.pgpass"
# Client connections: loopback TCP, password proven by SCRAM, nothing else.
_HBA = f"""\
# written by intake: loopback only, and every connection proves the password
# kept in the state directory's pgpass (readable by intake's user alone).
# DB1's standby streams as {REPLICATOR}, which may do nothing else.
host    replication    {REPLICATOR}    127.0.0.1/32    scram-sha-256
host    all            {REPLICATOR}    127.0.0.1/32    reject
host    all            all                  127.0.0.1/32    scram-sha-256
"""


@dataclass(frozen=True)
class Cluster:
    name: str
    datadir: str
    port: int

    @property
    def passfile(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.datadir)), PASSFILE)

    def dsn_for(self, dbname: str) -> str:
        """A DSN for one of this cluster's databases; the password stays in the passfile."""
        return local_dsn(self.port, dbname, self.passfile)

    @property
    def dsn(self) -> str:
        return self.dsn_for(DATABASE)

    @property
    def logfile(self) -> str:
        # Named for the directory, not the role: a promoted standby keeps
        # writing the log it started with.
        datadir = Path(self.datadir)
        return str(datadir.parent / f"{datadir.name}.log")


def local_dsn(port: int | Sequence[int], dbname: str, passfile: str) -> str:
    """intake's superuser on a loopback port (a cluster's, or a pooler's in front
    of it), its password read from `passfile`, never written in the DSN.

    Several ports make a multi-host DSN that libpq tries in order, settling on
    the one that accepts writes: DB1 and its standby, whichever is primary.
    """
    if isinstance(port, int):
        return make_conninfo(
            "", host="127.0.0.1", port=port, user=SUPERUSER, dbname=dbname, passfile=passfile
        )
    return make_conninfo(
        "",
        host=",".join("127.0.0.1" for _ in port),
        port=",".join(str(p) for p in port),
        user=SUPERUSER,
        dbname=dbname,
        passfile=passfile,
        target_session_attrs="read-write",
    )


def db1_dsn(clusters: Mapping[str, Cluster], dbname: str = DATABASE) -> str:
    """DB1's DSN; with a standby, both nodes, so that a command (or a worker
    reconnecting) reaches whichever is primary, before a promotion or after."""
    db1 = clusters["db1"]
    standby = clusters.get(STANDBY)
    if standby is None:
        return db1.dsn_for(dbname)
    return local_dsn((db1.port, standby.port), dbname, db1.passfile)


def _major_of(bindir: Path) -> float:
    """The major version in a Debian layout path (/usr/lib/postgresql/15/bin), for sorting."""
    try:
        return float(bindir.parent.name)
    except ValueError:
        return 0.0


def pg_bindir() -> Path:
    """Where initdb, pg_ctl and postgres live.

    $INTAKE_PG_BIN, else the installed major $INTAKE_PG_MAJOR names, else
    pg_config, the newest major under /usr/lib/postgresql, or PATH.
    """
    override = os.environ.get("INTAKE_PG_BIN")
    if override:
        return Path(override)
    major = os.environ.get("INTAKE_PG_MAJOR")
    if major:
        wanted = Path("/usr/lib/postgresql") / major / "bin"
        if not re.fullmatch(r"[0-9]{1,3}", major) or not (wanted / "initdb").exists():
            raise EmbeddedClusterError(
                f"INTAKE_PG_MAJOR={major!r}: no PostgreSQL server of that major version is "
                f"installed ({wanted}/initdb not found); install it "
                f"(Debian: apt-get install postgresql-{major}) or unset INTAKE_PG_MAJOR"
            )
        return wanted
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_of, reverse=True):
        if (root / "initdb").exists():
            return root
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise EmbeddedClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: run "
        "scripts/bootstrap.sh as root (it installs them with apt), install PostgreSQL "
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


def _conf_string(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _settings_for(
    name: str,
    port: int,
    options: EmbeddedSettings,
    with_cron: bool,
    *,
    replicated: bool = False,
    sync_standby: bool = False,
    primary_conninfo: str | None = None,
) -> str:
    """postgresql.auto.conf for a cluster.

    replicated: DB1 or its standby, streaming (replica WAL, WAL senders, and
    commits that wait). sync_standby: commits wait for DB1's standby by name;
    a standby carries it too, as the copy of DB1 it is (a promotion clears it).
    primary_conninfo: this cluster is DB1's standby, streaming from there.
    """
    durable = options.synchronous_commit or replicated
    lines = [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        "unix_socket_directories = ''",
        f"max_connections = {options.max_connections}",
        f"shared_buffers = '{options.shared_buffers}'",
        f"max_locks_per_transaction = {options.max_locks_per_transaction}",
        # With a standby, `on` waits for the standby's flush as well as ours.
        f"synchronous_commit = {'on' if durable else 'off'}",
    ]
    if replicated:
        lines += [
            "wal_level = replica",
            "max_wal_senders = 4",
            # Room for a standby that fell behind to catch up without a new
            # base backup (no slot: a lost standby must not fill the disk).
            "wal_keep_size = '512MB'",
            "hot_standby = on",
        ]
    else:
        lines += [
            # Nothing replicates from an event cluster: minimal WAL makes seeding
            # and queue churn cheaper without weakening crash safety.
            "wal_level = minimal",
            "max_wal_senders = 0",
        ]
    if sync_standby:
        lines.append(f"synchronous_standby_names = 'FIRST 1 ({STANDBY_APPLICATION})'")
    if primary_conninfo is not None:
        lines.append(f"primary_conninfo = {_conf_string(primary_conninfo)}")
    lines += [
        "max_wal_size = '2GB'",
        "checkpoint_timeout = '15min'",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] '",
    ]
    if name in DB1_DIRECTORIES:
        # A claim holds a unit lock for microseconds: fail a stuck claim
        # quickly rather than let the herd pile up behind it.
        lines.append("lock_timeout = '5s'")
        if with_cron:
            lines += [
                "shared_preload_libraries = 'pg_cron'",
                f"cron.database_name = '{DATABASE}'",
                # Jobs run in background workers, not libpq sessions: pg_cron
                # needs no password (the server user has no passfile) and no
                # loopback connection of its own. Two jobs, each at most one
                # worker at a time, besides the launcher and parallel query.
                "cron.use_background_workers = on",
                "cron.max_running_jobs = 4",
                "max_worker_processes = 16",
            ]
    return "\n".join(["# written by intake", *lines, ""])


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None = None) -> None:
    """Write a file only its owner can read (0600), replacing any other in one step."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# Locks this process holds, by state directory: (descriptor, depth). flock
# excludes two descriptors of one process too, so a nested `locked()` (up
# holding it, ensure asking again) reuses the first.
_held: dict[str, list[int]] = {}


class EmbeddedClusters:
    """The pair of clusters under one state directory."""

    def __init__(self, state_dir: Path, options: EmbeddedSettings | None = None) -> None:
        self.state_dir = state_dir
        self.options = options or EmbeddedSettings()
        self.state_path = state_dir / STATE_FILE
        self.marker = state_dir / MARKER
        self.passfile = state_dir / PASSFILE

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

    # -- the state directory: claimed, locked, and only intake's own removed ---

    def _own_names(self) -> set[str]:
        """Every name intake may create in the state directory."""
        names = {MARKER, PASSFILE, f"{PASSFILE}.tmp", STATE_FILE}
        names |= {REPLICATION_PASSFILE, f"{REPLICATION_PASSFILE}.tmp"}
        for name in (*CLUSTER_NAMES, STANDBY):
            names |= {name, f"{name}.log", f"{name}.pwfile", f"{name}.pwfile.tmp"}
        return names

    def _claim(self) -> bool:
        """Make the directory intake's (marker) unless it holds files of someone else's.

        True when this call created the directory.
        """
        created = False
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise StateDirRefused(
                f"state_dir {self.state_dir} is not a directory intake can own: "
                "set state_dir to a new or empty directory"
            )
        if self.state_dir.exists():
            if not self.marker.exists() and not self.state_path.exists():
                foreign = sorted(os.listdir(self.state_dir))
                if foreign:
                    shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
                    raise StateDirRefused(
                        f"state_dir {self.state_dir} holds files intake did not create "
                        f"({shown}) and no {MARKER} marker: intake keeps its clusters in a "
                        "directory of its own. Set state_dir to a new or empty directory "
                        "(the default is .intake), or move those files out"
                    )
            # A clusters.json without a marker: a state directory made by an
            # older intake, adopted (only intake's own entries are ever removed).
        else:
            try:
                self.state_dir.mkdir(parents=True)
                created = True
            except FileExistsError:  # another `intake up` made it just now
                pass
        try:
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return created
        with os.fdopen(fd, "w") as out:
            out.write(
                f"intake {__version__} keeps its embedded clusters here. It removes only what "
                "it created (this file last) and leaves anything else alone.\n"
            )
        return created

    @contextmanager
    def locked(self, *, create: bool = True) -> Iterator[bool]:
        """Hold the state directory for one `up` or `down` at a time.

        create=True claims the directory (made if missing, refused if it holds
        others' files); create=False takes the lock only where intake's state
        is, and yields False (no lock) where there is none. A second process
        waits here until the first is done, then sees what the first left.
        """
        key = os.path.abspath(self.state_dir)
        if key in _held:
            _held[key][1] += 1
            try:
                yield True
            finally:
                _held[key][1] -= 1
            return
        created = False
        while True:
            if create:
                created = self._claim() or created
            elif not self.marker.exists():
                if not self.state_path.exists():
                    yield False
                    return
                self._claim()
            try:
                fd = os.open(self.marker, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:  # removed by a `down` that held it: claim anew
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(self.marker).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # a `down` removed the marker while we waited: start again
        _held[key] = [fd, 0]
        try:
            yield True
        finally:
            del _held[key]
            try:
                # An `up` that failed before making anything leaves no trace.
                if created and os.listdir(self.state_dir) == [MARKER]:
                    self.marker.unlink()
                    self.state_dir.rmdir()
            except OSError:
                pass  # gone already, or no longer empty: not ours to tidy
            finally:
                os.close(fd)

    # -- the password ----------------------------------------------------------

    def _passwords(self) -> dict[int, str]:
        """The passfile's passwords by cluster port."""
        try:
            text = self.passfile.read_text()
        except FileNotFoundError:
            return {}
        found = {}
        for line in text.splitlines():
            fields = line.split(":", 4)
            # Lines intake did not write (comments, hand edits) are not its passwords.
            if len(fields) == 5 and fields[0] == "127.0.0.1" and fields[1].isdigit():
                found[int(fields[1])] = fields[4]
        return found

    def _remember(self, port: int, password: str, forget: int | None = None) -> None:
        passwords = self._passwords()
        if forget is not None:
            passwords.pop(forget, None)
        passwords[port] = password
        self._write_passwords(passwords)

    def _forget(self, port: int) -> None:
        """Drop a port's password: a removed standby's, a lost primary's."""
        passwords = self._passwords()
        if passwords.pop(port, None) is not None:
            self._write_passwords(passwords)

    def _write_passwords(self, passwords: dict[int, str]) -> None:
        lines = [f"127.0.0.1:{p}:*:{SUPERUSER}:{pw}" for p, pw in sorted(passwords.items())]
        # Owned by the user running intake (not the server's): libpq reads it
        # for intake, and nobody else on the machine can.
        _write_private(
            self.passfile,
            "\n".join(["# written by intake: the embedded clusters' passwords", *lines, ""]),
        )

    # -- lifecycle -------------------------------------------------------------

    def ensure(self, names: tuple[str, ...] = CLUSTER_NAMES) -> dict[str, Cluster]:
        """Initialise and start what is missing; leave running clusters alone."""
        bindir = pg_bindir()
        account = _server_account()
        with self.locked():
            if account is not None:
                _check_reachable(self.state_dir, account)
            clusters = self.load()
            with_cron = pg_cron_available(bindir)
            for name in names:
                cluster = clusters.get(name)
                if cluster is None or not (Path(cluster.datadir) / "PG_VERSION").exists():
                    if name == "db1" and cluster is not None and STANDBY in clusters:
                        raise EmbeddedClusterError(
                            f"DB1's data directory {clusters['db1'].datadir} is gone and its "
                            f"standby ({clusters[STANDBY].datadir}) has everything DB1 "
                            "committed: promote the standby rather than start an empty DB1, "
                            "or run `intake down` to start over"
                        )
                    old_port = cluster.port if cluster is not None else None
                    cluster = self._init(name, bindir, account, with_cron, old_port)
                    clusters[name] = cluster
                    self._save(clusters)
                if not self.running(cluster, bindir, account):
                    self._start(cluster, bindir, account)
                if cluster.port not in self._passwords():
                    self._secure(cluster, bindir, account, with_cron)
            return clusters

    def _init(
        self,
        name: str,
        bindir: Path,
        account: pwd.struct_passwd | None,
        with_cron: bool,
        old_port: int | None = None,
    ) -> Cluster:
        datadir = self.state_dir / name
        # Under intake's marker, a cluster directory without PG_VERSION is
        # what an interrupted initdb left.
        self._fresh_datadir(datadir, account)
        password = secrets.token_hex(24)
        # initdb runs as the server's user and must read the password; the
        # file lives only as long as initdb does.
        pwfile = self.state_dir / f"{name}.pwfile"
        _write_private(pwfile, password + "\n", account)
        try:
            _run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ],
                account,
                f"initdb for {name}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        port = free_port()
        self._remember(port, password, forget=old_port)
        cluster = Cluster(name=name, datadir=str(datadir), port=port)
        # DB1 streams from its first start when a standby is wanted: adding
        # the standby then needs no restart.
        replicated = name == "db1" and self.options.standby
        self._configure(cluster, account, with_cron, replicated=replicated)
        return cluster

    def _fresh_datadir(self, datadir: Path, account: pwd.struct_passwd | None) -> None:
        """An empty data directory (0700, the server's) where one of ours was."""
        if datadir.is_dir() and not datadir.is_symlink():
            shutil.rmtree(datadir)
        elif datadir.exists() or datadir.is_symlink():
            datadir.unlink()
        datadir.mkdir(mode=0o700)
        if account is not None:
            os.chown(datadir, account.pw_uid, account.pw_gid)

    def _configure(
        self,
        cluster: Cluster,
        account: pwd.struct_passwd | None,
        with_cron: bool,
        *,
        replicated: bool = False,
        sync_standby: bool = False,
        primary_conninfo: str | None = None,
    ) -> None:
        """Write a cluster's settings and pg_hba.conf (applied at its next start or reload)."""
        datadir = Path(cluster.datadir)
        settings = _settings_for(
            cluster.name,
            cluster.port,
            self.options,
            with_cron,
            replicated=replicated,
            sync_standby=sync_standby,
            primary_conninfo=primary_conninfo,
        )
        for path, text in (
            (datadir / "postgresql.auto.conf", settings),
            (datadir / "pg_hba.conf", _HBA),
        ):
            path.write_text(text)
            if account is not None:
                os.chown(path, account.pw_uid, account.pw_gid)

    def _secure(
        self,
        cluster: Cluster,
        bindir: Path,
        account: pwd.struct_passwd | None,
        with_cron: bool,
    ) -> None:
        """Give a cluster an older intake made with trust authentication a password.

        It is running and still trusts loopback: set a generated password,
        remember it in the passfile, require it (pg_hba.conf) and restart
        with today's settings (pg_cron in background workers needs a restart).
        """
        password = secrets.token_hex(24)
        try:
            with open_sync(cluster.dsn_for("postgres")) as conn:
                # The SCRAM verifier is computed here: the password itself
                # never reaches the server (or its log).
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), SUPERUSER.encode(), b"scram-sha-256"
                )
                conn.execute(
                    sql.SQL("alter role {} password {}").format(
                        sql.Identifier(SUPERUSER), sql.Literal(verifier.decode())
                    )
                )
        except psycopg.OperationalError as exc:
            raise EmbeddedClusterError(
                f"{cluster.name} has no password in {self.passfile} and refuses a connection "
                f"without one ({str(exc).strip().splitlines()[-1]}): the passfile was removed "
                "or replaced, and intake cannot connect without it: restore it"
            ) from None
        self._remember(cluster.port, password)
        has_standby = cluster.name == "db1" and STANDBY in self.load()
        self._configure(
            cluster,
            account,
            with_cron,
            replicated=has_standby or (cluster.name == "db1" and self.options.standby),
            sync_standby=has_standby,
        )
        restart = ["restart", "-w", "-t", "60", "-m", "fast", "-D", cluster.datadir]
        _run(
            [str(bindir / "pg_ctl"), *restart, "-l", cluster.logfile],
            account,
            f"restarting {cluster.name} with password authentication",
        )

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
        self._create_database(cluster)

    def _create_database(self, cluster: Cluster) -> None:
        # Connected as intake's user, who holds the passfile (the server's
        # user does not).
        try:
            with open_sync(cluster.dsn_for("postgres")) as conn:
                exists = conn.execute(
                    "select 1 from pg_database where datname = %s", (DATABASE,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
        except psycopg.Error as exc:
            raise EmbeddedClusterError(
                f"creating {DATABASE} in {cluster.name} failed: {exc}"
            ) from None

    def halt(self, names: tuple[str, ...] = CLUSTER_NAMES) -> None:
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

    def stop(self) -> list[str]:
        """Stop every cluster and remove what intake made in the state directory.

        The directory itself goes when nothing else is left in it. Returns the
        names left there that intake did not make (sorted), which it leaves alone.
        """
        with self.locked(create=False) as ours:
            if not ours:
                return []
            clusters = self.load()
            if clusters:
                self.halt(tuple(clusters))
            # Only the names intake makes: anything else here is someone else's.
            for name in sorted(self._own_names() - {MARKER}):
                path = self.state_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            left = sorted(set(os.listdir(self.state_dir)) - {MARKER})
            self.marker.unlink(missing_ok=True)
            if not left:
                self.state_dir.rmdir()
            return left
