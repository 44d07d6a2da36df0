"""A real PgBouncer in transaction mode in front of an embedded cluster: the
stand-in for Supavisor's port 6543 that a hosted DB1 is reached through, for
the pooled-life test and `intake bench claims --pooler`.

Auth: the pooler's auth_file holds the cluster's SCRAM secret for `intake`
(read from pg_authid), never the password. PgBouncer checks a client's SCRAM
proof against it, and, because the client proved itself with SCRAM, reuses
the proof's keys to log in to the server (SCRAM pass-through, PgBouncer
>= 1.14). The client's password stays in a 0600 passfile of its own, named
by `passfile=` in the DSN, as for the embedded clusters. One pooler per
cluster: each cluster has its own password, and an auth_file one secret per
user.

PgBouncer refuses to run as root: under root it runs as the unprivileged
server account, as the clusters do (`embedded._as`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from intake_cli.platform.embedded import (
    PASSFILE,
    SUPERUSER,
    Cluster,
    _as,
    _server_account,
    free_port,
    local_dsn,
)
from intake_cli.platform.errors import IntakeError
from intake_cli.platform.pgconn import open_sync

# Clients one pooler accepts: the benchmark's largest herd and then some.
MAX_CLIENT_CONNECTIONS = 4000


def pgbouncer_path() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


@dataclass(frozen=True)
class Pooler:
    port: int
    passfile: Path
    logfile: Path

    def dsn_for(self, dbname: str) -> str:
        """A DSN for one of the cluster's databases, through the pooler."""
        return local_dsn(self.port, dbname, str(self.passfile))

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def _password(cluster: Cluster) -> str:
    """The cluster's password for `intake`, from the state directory's passfile."""
    for line in Path(cluster.passfile).read_text().splitlines():
        fields = line.split(":", 4)
        if len(fields) == 5 and fields[:2] == ["127.0.0.1", str(cluster.port)]:
            return fields[4]
    raise IntakeError(f"no password for port {cluster.port} in {cluster.passfile}")


def _write(path: Path, text: str, mode: int, owner: int | None = None) -> None:
    path.write_text(text)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, -1)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = logfile.read_text() if logfile.exists() else ""
            raise IntakeError(f"pgbouncer exited {proc.returncode}: {text[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise IntakeError(f"pgbouncer did not listen on {port} within 10 s")


@contextmanager
def pgbouncer(cluster: Cluster, pool_size: int = 20) -> Iterator[Pooler]:
    """PgBouncer in `pool_mode = transaction` for every database of `cluster`."""
    binary = pgbouncer_path()
    if binary is None:
        raise IntakeError(
            "pgbouncer is not installed (Debian: apt-get install pgbouncer; "
            "scripts/test-deps.sh installs it for the tests)"
        )
    account = _server_account()
    with open_sync(cluster.dsn_for("postgres")) as conn:
        (secret,) = conn.execute(
            "select rolpassword from pg_authid where rolname = %s", (SUPERUSER,)
        ).fetchone()  # type: ignore[misc]
    if not secret.startswith("SCRAM-SHA-256$"):
        raise IntakeError("the cluster's password is not a SCRAM secret: the pooler cannot pass it")

    # Under the state directory's parent: the server account can reach it.
    home = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=Path(cluster.datadir).parent.parent))
    uid = account.pw_uid if account else None
    home.chmod(0o700)
    if account is not None:
        os.chown(home, account.pw_uid, account.pw_gid)
    port = free_port()
    logfile = home / "pgbouncer.log"
    _write(home / "userlist.txt", f'"{SUPERUSER}" "{secret}"\n', 0o600, uid)
    _write(
        home / "pgbouncer.ini",
        "\n".join(
            [
                "[databases]",
                f"* = host=127.0.0.1 port={cluster.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {home / 'userlist.txt'}",
                "pool_mode = transaction",
                # Few server connections for many clients, as a hosted pooler.
                f"default_pool_size = {pool_size}",
                f"max_client_conn = {MAX_CLIENT_CONNECTIONS}",
                f"logfile = {logfile}",
                f"pidfile = {home / 'pgbouncer.pid'}",
                "",
            ]
        ),
        0o600,
        uid,
    )
    # The client's own passfile (intake's user, 0600), keyed by the pooler's port.
    client = Path(tempfile.mkdtemp(prefix="pooler-client-")) / PASSFILE
    _write(client, f"127.0.0.1:{port}:*:{SUPERUSER}:{_password(cluster)}\n", 0o600)
    proc = subprocess.Popen(
        [binary, str(home / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        **_as(account),
    )
    try:
        _wait_listening(port, proc, logfile)
        yield Pooler(port=port, passfile=client, logfile=logfile)
    finally:
        # SIGTERM: immediate shutdown (SIGINT would wait for clients).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(client.parent, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def version() -> str | None:
    """`pgbouncer --version`'s first line, for a benchmark's record of the machine."""
    binary = pgbouncer_path()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else None
