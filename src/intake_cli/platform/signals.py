"""Stopping on SIGINT/SIGTERM, for intake's long-running processes (drain, serve)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGINT or SIGTERM while the block runs.

    Afterwards the signals are ignored rather than given back their default
    action: the block ends as the process stops, and a supervisor repeating
    its SIGTERM while the interpreter winds down must not turn a clean exit
    into a kill.
    """
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
