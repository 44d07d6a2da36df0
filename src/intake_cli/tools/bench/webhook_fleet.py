"""The test webhook as several processes on one port, for `intake bench drain`.

One aiohttp process answers about as fast as one drain worker asks, so a
fleet of workers measured against one webhook process measures the webhook.
Here N processes of the same server (intake_cli.tools.testhook) listen on one
port with SO_REUSEPORT and the kernel spreads the workers' connections among
them. Each process keeps its own call counters: the fleet is for throughput,
the tests' per-key checks use the one-process WebhookServer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import typer

from intake_cli.platform import eventloop
from intake_cli.tools.testhook import Script, TestWebhook, serve

READY_TIMEOUT_S = 15.0


def default_processes(cores: int | None = None) -> int:
    """A process per four cores, at least one: the workers and both clusters need the rest."""
    return max(1, (cores or os.cpu_count() or 1) // 4)


class WebhookFleet:
    """`with WebhookFleet(processes=4, delay_ms=0) as hook:` then POST to `hook.url`."""

    def __init__(self, processes: int = 1, delay_ms: int = 0) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.processes = processes
        self.delay_ms = delay_ms
        self.port: int | None = None
        self.pids: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="intake-webhook-fleet-"))

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the webhook fleet has not been started")
        return f"http://127.0.0.1:{self.port}/validate"

    def _spawn(self, n: int, port: int) -> int:
        ready = self._dir / f"ready-{n}"
        argv = [
            sys.executable, "-m", "intake_cli.tools.bench.webhook_fleet",
            "--port", str(port), "--delay-ms", str(self.delay_ms), "--ready-file", str(ready),
        ]  # fmt: skip
        stderr = open(self._dir / f"stderr-{n}", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
        stderr.close()
        self._procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (self._dir / f"stderr-{n}").read_text(errors="replace").strip()
                raise RuntimeError(f"webhook fleet process {n} did not start:\n{output}")
            time.sleep(0.02)
        return int(ready.read_text().strip())

    def __enter__(self) -> WebhookFleet:
        try:
            # The first binds a free port; the others join it.
            self.port = self._spawn(0, 0)
            for n in range(1, self.processes):
                self._spawn(n, self.port)
        except BaseException:
            self.close()
            raise
        self.pids = [p.pid for p in self._procs]
        return self

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        shutil.rmtree(self._dir, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _member(
    port: int = typer.Option(..., "--port"),
    delay_ms: int = typer.Option(0, "--delay-ms", min=0),
    ready_file: Path = typer.Option(..., "--ready-file"),
) -> None:
    """One process of the fleet (internal)."""
    hook = TestWebhook(Script(delay_ms=delay_ms), None, keep_calls=0)
    eventloop.run(serve(hook, "127.0.0.1", port, ready_file, announce=False, reuse_port=True))


if __name__ == "__main__":
    typer.run(_member)
