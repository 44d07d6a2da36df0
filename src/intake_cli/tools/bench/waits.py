"""What the PostgreSQL backends wait on during a drain run, sampled from pg_stat_activity.

A thread polls each cluster every `interval_s` and counts, per wait event,
the backends of the benchmark's databases found in it. An active backend
with no wait event is on the CPU ("CPU: running"); "Client: ClientRead" is a
backend waiting for the worker's next statement (the round trip, or the
worker's own event loop); "Lock: transactionid" or "LWLock: ..." would be
workers queueing behind one another.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg

from intake_cli.platform.pgconn import open_sync
from intake_cli.platform.sqlfiles import queries


class WaitSampler:
    """`with WaitSampler({"db1": (dsn, [db]), ...}):` samples until the block ends."""

    def __init__(self, targets: dict[str, tuple[str, list[str]]], interval_s: float = 0.05):
        self.targets = targets
        self.interval_s = interval_s
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in targets}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wait-sampler", daemon=True)

    def _run(self) -> None:
        query = queries("bench_drain")["wait_sample"]
        conns = {name: open_sync(dsn) for name, (dsn, _) in self.targets.items()}
        try:
            while not self._stop.wait(self.interval_s):
                for name, conn in conns.items():
                    rows = conn.execute(query, {"databases": self.targets[name][1]}).fetchall()
                    for kind, event, state in rows:
                        label = f"{kind}: {event}"
                        if state == "idle in transaction":
                            label = "Client: idle in transaction"
                        self.counts[name][label] += 1
                self.samples += 1
        except psycopg.Error:
            # A cluster gone mid-run ends the sampling; the run reports what it has.
            pass
        finally:
            for conn in conns.values():
                conn.close()

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self, top: int = 6) -> dict[str, Any]:
        """Per cluster: busy backends on average, and the top wait events with their shares."""
        found: dict[str, Any] = {"samples": self.samples}
        for name, counts in self.counts.items():
            total = sum(counts.values())
            found[name] = {
                "busy_backends_avg": round(total / self.samples, 2) if self.samples else 0,
                "top": [
                    {"event": event, "share": round(n / total, 3)}
                    for event, n in counts.most_common(top)
                ],
            }
        return found
