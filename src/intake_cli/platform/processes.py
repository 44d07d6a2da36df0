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
from multiprocessing import resource_tracker
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
    children = [context.Process(target=target, args=args, daemon=False) for _ in range(count)]
    # Ctrl-C reaches every process of the terminal's group, and the parent
    # passes it on as SIGTERM. A SIGINT ignored here stays ignored in a
    # child through its exec, so Python does not turn one that arrives while
    # the child starts into a KeyboardInterrupt traceback; the job's own
    # handlers (the worker's, aiohttp's) take over once installed. The parent
    # also blocks SIGINT meanwhile: Linux keeps a blocked signal pending even
    # while it is ignored, so the parent takes a Ctrl-C given as the fleet
    # starts once its handler is in (ignored alone, it was lost: the fleet
    # drained on). Spawned children do not inherit the mask.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid is not None:
                child.terminate()

    # The other stop signals are handled before the first child starts: one
    # that arrives while they start stops those started and starts no more
    # (handled only after, it killed the parent and left the children on).
    # multiprocessing starts its resource tracker with the first child and
    # then unblocks SIGINT whatever the mask was: started first, it leaves
    # the mask alone.
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN if sig == signal.SIGINT else stop)
    started = []
    try:
        for child in children:
            if stopping:
                break
            child.start()
            started.append(child)
    finally:
        if signal.SIGINT in STOP_SIGNALS:
            signal.signal(signal.SIGINT, stop)
        # A Ctrl-C held pending while they started is taken here, by `stop`.
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if stopping:
        stop(signal.SIGTERM, None)
    try:
        for child in started:
            child.join()
    finally:
        for sig, handler in previous.items():
            # None: a handler not set from Python, which cannot be put back.
            if handler is not None:
                signal.signal(sig, handler)
    for child in started:
        code = child.exitcode
        if code not in (0, -signal.SIGTERM):
            return code if code is not None and code > 0 else 1
    return 0
