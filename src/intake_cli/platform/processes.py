"""Running one job as several processes on one machine (`drain --workers`,
`gateway --workers`): the cores are used, and one command starts and stops
the lot.

Each process starts clean (spawn: no copy of the parent's event loop,
connections or threads) and runs the same job as a single-process command
would. The parent only supervises: a SIGINT or SIGTERM it receives is passed
on as SIGTERM, which every intake process takes as "finish and stop", and it
waits for them all.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from intake_cli.platform.signals import STOP_SIGNALS


def run_processes(target: Callable[..., Any], args: tuple[Any, ...], count: int) -> int:
    """Run `target(*args)` in `count` processes until every one has ended.

    Returns the status to exit with: 0 when each ended cleanly (0, or by the
    SIGTERM passed on to it), else the first other status (a child killed by
    a signal counts as 1).
    """
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child, args=(target, args), daemon=False) for _ in range(count)
    ]
    for child in children:
        child.start()

    def stop(signum: int, _: FrameType | None) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                child.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        for child in children:
            child.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for child in children:
        code = child.exitcode
        if code not in (0, -signal.SIGTERM):
            return code if code is not None and code > 0 else 1
    return 0


def _child(target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # Ctrl-C reaches every process of the terminal's group; the parent passes
    # it on as SIGTERM. Until the job installs its own handlers, a SIGINT
    # here would only end the process with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(*args)
