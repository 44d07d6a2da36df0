"""Where a drain worker's time goes, phase by phase, for `intake bench drain`.

Off unless INTAKE_DRAIN_PHASES names a directory: then every worker process
adds up the wall time its batches spend in each phase (summed over its slots,
so the shares say where a slot waits) and writes the totals to
`<dir>/<pid>.json` when it exits. Off, `add` is one global lookup and a
return, and `clock` hands back a shared no-op: the drain pays nothing for it.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from types import TracebackType

ENV = "INTAKE_DRAIN_PHASES"


class _Totals:
    def __init__(self, target: Path) -> None:
        self.target = target
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.count: defaultdict[str, int] = defaultdict(int)
        self.cpu_started = time.process_time()
        self.wall_started = time.monotonic()

    def write(self) -> None:
        document = {
            "pid": os.getpid(),
            "wall_s": round(time.monotonic() - self.wall_started, 3),
            # The worker process's own CPU (its one event loop): near wall_s
            # means the loop, not the databases or the webhook, is the limit.
            "cpu_s": round(time.process_time() - self.cpu_started, 3),
            "phases": {
                name: {"seconds": round(s, 4), "count": self.count[name]}
                for name, s in sorted(self.seconds.items())
            },
        }
        partial = self.target.with_suffix(".partial")
        partial.write_text(json.dumps(document), encoding="utf-8")
        partial.replace(self.target)


def _start() -> _Totals | None:
    directory = os.environ.get(ENV)
    if not directory:
        return None
    totals = _Totals(Path(directory) / f"{os.getpid()}.json")
    atexit.register(totals.write)
    return totals


_totals: _Totals | None = None
_started = False


def enable() -> None:
    """Start counting if the environment asks for it (once per process; the worker calls it)."""
    global _totals, _started
    if not _started:
        _started = True
        _totals = _start()


def add(name: str, seconds: float, count: int = 1) -> None:
    """Count `seconds` spent in phase `name` (nothing when off)."""
    totals = _totals
    if totals is None:
        return
    totals.seconds[name] += seconds
    totals.count[name] += count


class _Clock:
    __slots__ = ("name", "started")

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        add(self.name, time.perf_counter() - self.started)


class _Off:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def clock(name: str) -> _Clock | _Off:
    """`with phases.clock("commit"):` times the block into that phase when on."""
    return _OFF if _totals is None else _Clock(name)
