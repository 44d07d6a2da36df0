"""The scriptable test webhook (intake_cli.tools.testhook) in a subprocess.

Used by the tests, the benchmarks and the demo.

A real server in its own process, so the code under test talks HTTP over
loopback exactly as it would to a payment provider, and "the webhook is
down" means connections are really refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

SECRET_ENV = "INTAKE_TESTHOOK_SECRET"
READY_TIMEOUT_S = 10.0


class WebhookServer:
    """Start with `with WebhookServer(...) as server:`; `server.url` is the webhook.

    Recorded calls survive `stop()`/`start()` (the helper keeps what the
    stopped process had seen), but the restarted server's per-key counters
    for `fail_first` start from zero.
    """

    def __init__(
        self,
        decline_share: float = 0.0,
        fail_first: int = 0,
        delay_ms: int = 0,
        secret: str | None = None,
        port: int | None = None,
        fail_status: int = 503,
        fail_share: float = 0.0,
        slow_share: float = 0.0,
        slow_ms: int = 0,
        decline_reason: str | None = None,
        fail_reason: str | None = None,
        rate_limit: int = 0,
        retry_after: str = "seconds",
        outage: str | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "decline_share": decline_share,
            "fail_first": fail_first,
            "fail_share": fail_share,
            "fail_status": fail_status,
            "delay_ms": delay_ms,
            "slow_share": slow_share,
            "slow_ms": slow_ms,
            "decline_reason": decline_reason,
            "fail_reason": fail_reason,
            "rate_limit": rate_limit,
            "retry_after": retry_after,
            "outage": outage,
        }
        self.secret = secret
        self.port: int | None = port
        self._dir = Path(tempfile.mkdtemp(prefix="intake-webhook-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: httpx.Client | None = None
        self._earlier: list[dict[str, Any]] = []  # calls seen before a stop()

    @property
    def url(self) -> str:
        return f"{self.base_url}/validate"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the webhook server has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> WebhookServer:
        """Start the server; after `stop()`, on the same port as before."""
        if self.running:
            return self
        ready = self._dir / "ready"
        ready.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "intake_cli.tools.testhook",
            "--host", "127.0.0.1",
            "--port", str(self.port or 0),
            "--ready-file", str(ready),
            "--decline-share", str(self._options["decline_share"]),
            "--fail-first", str(self._options["fail_first"]),
            "--fail-share", str(self._options["fail_share"]),
            "--fail-status", str(self._options["fail_status"]),
            "--delay-ms", str(self._options["delay_ms"]),
            "--slow-share", str(self._options["slow_share"]),
            "--slow-ms", str(self._options["slow_ms"]),
            "--rate-limit", str(self._options["rate_limit"]),
            "--retry-after", str(self._options["retry_after"]),
        ]  # fmt: skip
        for name in ("decline_reason", "fail_reason", "outage"):
            if self._options[name] is not None:
                argv += [f"--{name.replace('_', '-')}", self._options[name]]
        env = dict(os.environ)
        if self.secret is not None:
            # Through the environment: argv is visible to every user in ps.
            env[SECRET_ENV] = self.secret
            argv += ["--secret-env", SECRET_ENV]
        stderr_path = self._dir / "stderr"
        with open(stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self._kill()
                output = stderr_path.read_text(errors="replace").strip()
                why = f"exited with code {code}" if code is not None else "timed out"
                raise RuntimeError(
                    f"webhook server did not start within {READY_TIMEOUT_S:g} s ({why}):\n{output}"
                )
            time.sleep(0.02)
        self.port = int(ready.read_text().strip())
        self._control = httpx.Client(base_url=self.base_url, timeout=30.0)
        return self

    def stop(self) -> None:
        """Take the webhook down: from now on connections to its port are refused."""
        if self.running:
            self._earlier += self._fetch()["calls"]
        self._kill()

    def close(self) -> None:
        self._kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _kill(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _client(self) -> httpx.Client:
        if self._control is None or not self.running:
            raise RuntimeError("the webhook server is not running")
        return self._control

    def _fetch(self, limit: int | None = None) -> dict[str, Any]:
        params = {} if limit is None else {"limit": limit}
        response = self._client().get("/_control/calls", params=params)
        response.raise_for_status()
        return response.json()

    def calls(self) -> dict[str, Any]:
        """{"calls": [...], "per_key": {...}, "total": n, "by_status": {...}}, including
        calls before a restart."""
        live = self._fetch()
        if not self._earlier:
            return live
        calls = self._earlier + live["calls"]
        by_status = Counter(live["by_status"])
        by_status.update(str(call["status"]) for call in self._earlier)
        return {
            **live,
            "calls": calls,
            # Calls refused by a rate limit or an outage decided nothing about their key.
            "per_key": dict(Counter(call["key"] for call in calls if call["decided"])),
            "total": len(calls) + live["dropped"],
            "by_status": dict(by_status),
        }

    def by_status(self) -> dict[str, int]:
        """How many calls got each status ("0": dropped or hung), however long the log."""
        if self._earlier:
            return self.calls()["by_status"]
        return self._fetch(limit=0)["by_status"]

    def per_key(self) -> dict[str, int]:
        """How many calls each idempotency key received."""
        if self._earlier:
            return self.calls()["per_key"]
        return self._fetch(limit=0)["per_key"]

    def script(self, **changes: Any) -> dict[str, Any]:
        """Change the running server's behaviour (and a restarted one's)."""
        response = self._client().post("/_control/script", json=changes)
        if response.status_code != 200:
            raise ValueError(response.json().get("reason", response.text))
        self._options.update(changes)
        return response.json()

    def reset(self) -> None:
        """Forget every call recorded so far, and every key's count."""
        self._client().post("/_control/reset").raise_for_status()
        self._earlier = []

    def __enter__(self) -> WebhookServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
