"""Running a coroutine to completion on the fastest event loop available.

uvloop where it is installed (Linux and macOS): the drain worker's loop
spends most of its CPU on HTTP calls to the webhook, and on uvloop each call
costs about 15 % less (benchmarks/README.md, "Drain scale-out"); the
gateway's processes spend theirs answering HTTP requests, and gain the same
way (docs/gateway.md). The standard loop otherwise, with the same
behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop of the same kind `run` uses, for servers that run their own
    (aiohttp's run_app)."""
    factory = _factory()
    return factory() if factory is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run(main), on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)
