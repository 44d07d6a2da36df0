"""Where a drain worker's time goes, phase by phase, for `intake bench drain`.

A batch reports each phase to the `Phases` its context carries. By default
that is NO_PHASES, which records nothing, so the drain pays one method call
per phase for the possibility. The bench asks for totals through the
environment of the `intake drain` processes it starts (ENV names a
directory, the same protocol older trees speak, so a baseline tree can be
measured beside this one): `PhaseClock.from_environment` is read once, where
the process starts its worker, and each process writes its totals to
`<dir>/<pid>.json` when it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

ENV = "INTAKE_DRAIN_PHASES"


class Phases(Protocol):
    def add(self, name: str, seconds: float, count: int = 1) -> None:
        """Count `seconds` spent in phase `name`."""

    def clock(self, name: str) -> AbstractContextManager[None]:
        """`with phases.clock("commit"):` times the block into that phase."""

    def begin(self) -> None:
        """The worker starts draining: wall and CPU time are measured from here."""


class _NoPhases:
    """Records nothing: the drain's default."""

    __slots__ = ()

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        return None

    def clock(self, name: str) -> AbstractContextManager[None]:
        return _NOTHING

    def begin(self) -> None:
        return None


_NOTHING = contextlib.nullcontext()
NO_PHASES: Phases = _NoPhases()


class PhaseClock:
    """Adds up the wall time a worker's batches spend in each phase.

    Summed over the worker's slots, so the shares say where a slot waits.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.count: defaultdict[str, int] = defaultdict(int)
        self.begin()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> PhaseClock | None:
        """A clock writing its totals when the process exits, if ENV names a directory."""
        directory = environ.get(ENV)
        if not directory:
            return None
        clock = cls()
        atexit.register(clock.write, Path(directory) / f"{os.getpid()}.json")
        return clock

    def begin(self) -> None:
        self.cpu_started = time.process_time()
        self.wall_started = time.monotonic()

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        self.seconds[name] += seconds
        self.count[name] += count

    @contextlib.contextmanager
    def clock(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def totals(self) -> dict[str, Any]:
        return {
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

    def write(self, target: Path) -> None:
        # Renamed into place: the bench reads the directory as the workers exit.
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(self.totals()), encoding="utf-8")
        partial.replace(target)
