"""A real `intake serve` in a subprocess, on a free port, for the serve and dashboard tests.

    with serving(event.config, token="t0ken") as server:
        status, body = server.call("GET", "/api/status")

`Server.url` is the base URL, `Server.token` the admin token: the one it was
started with, or (token=None: INTAKE_ADMIN_TOKEN unset) the one serve made
and printed. The process is stopped with SIGTERM when the block ends and
must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import INTAKE, ROOT

START_TIMEOUT_S = 60
TOKEN = "serve-test-admin-token-5c1e9a7f3b2d8e4a6f0c"
# What serve prints when it makes the run's token itself.
MADE_TOKEN = re.compile(r"this run's admin token is (\S+)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    token: str | None
    log_path: Path
    # One client for every request to this server (thread-safe): httpx.request
    # builds a client, and its TLS context, per call (~30 ms of CPU each).
    client: httpx.Client = field(default_factory=httpx.Client, repr=False)

    def headers(self, token: str | None = ...) -> dict[str, str]:  # type: ignore[assignment]
        """Authorization for `token` (default: the server's own; None: no header)."""
        use = self.token if token is ... else token
        return {"Authorization": f"Bearer {use}"} if use is not None else {}

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ...,  # type: ignore[assignment]
        timeout: float = 60,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        sends_body = {"content", "data"} & kwargs.keys() or kwargs.get("json") is not None
        if method not in ("GET", "HEAD") and not sends_body:
            kwargs["json"] = {}  # as the dashboard and any client: a change is sent as JSON
        response = self.client.request(
            method, self.url + path, headers=headers, timeout=timeout, **kwargs
        )
        # Each request as on its own, as httpx.request sent it: nothing carried over.
        self.client.cookies.clear()
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ...,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """(status, JSON body) of one request with the server's token unless told otherwise."""
        response = self.request(method, path, token=token, **kwargs)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def log(self) -> str:
        return self.log_path.read_text()


def start_serve(
    config: Path,
    *,
    token: str | None = TOKEN,
    host: str = "127.0.0.1",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """Start `intake serve` and wait until it answers HTTP; returns once it does."""
    environment = {k: v for k, v in os.environ.items() if k != "INTAKE_ADMIN_TOKEN"}
    if token is not None:
        environment["INTAKE_ADMIN_TOKEN"] = token
    environment.update(env or {})
    for _ in range(3):
        port = free_port(host)
        # A file, not a pipe nobody reads while serve runs (a full pipe would stall it).
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - read by Server.log, kept for debugging
            mode="w+", prefix="serve-", suffix=".log", dir=config.parent, delete=False
        )
        proc = subprocess.Popen(
            [*INTAKE, "-c", str(config), "serve", "--host", host, "--port", str(port), *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        log.close()
        server = Server(proc, f"http://{host}:{port}", token, Path(log.name))
        if _wait_until_answering(server):
            if token is None:
                made = MADE_TOKEN.search(server.log())
                assert made, f"serve printed no token of its own: {server.log()[-3000:]}"
                server.token = made.group(1)
            return server
        server.client.close()
        if "cannot listen" not in server.log():
            raise AssertionError(f"intake serve did not start: {server.log()[-3000:]}")
        # Another process took the free port between our check and serve's bind.
    raise AssertionError("intake serve found no free port in three tries")


def _wait_until_answering(server: Server) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            server.client.get(server.url + "/api/openapi.json", timeout=2)
            return True
        except httpx.TransportError:
            time.sleep(0.1)
    server.proc.kill()
    server.proc.wait()
    raise AssertionError(f"intake serve did not answer in {START_TIMEOUT_S} s: {server.log()}")


def stop_serve(server: Server, timeout: float = 60) -> str:
    """SIGTERM, as a supervisor would; serve must exit 0. Returns its log."""
    server.client.close()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError(f"intake serve did not stop: {server.log()[-3000:]}") from None
    log = server.log()
    assert server.proc.returncode == 0, f"serve exited {server.proc.returncode}: {log[-3000:]}"
    return log


@contextmanager
def serving(config: Path, **options: Any) -> Iterator[Server]:
    server = start_serve(config, **options)
    try:
        yield server
    finally:
        stop_serve(server)


def dead_letter(dsn: str, intent: dict, state: str = "validated") -> int:
    """Put a message in the DLQ the way the drain would."""
    body = {"intent": intent, "state": state, "attempts": 3, "last_error": "DB2 unavailable"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select pgmq.send('intents_dlq', %s::jsonb)", (json.dumps(body),)
        ).fetchone()[0]
