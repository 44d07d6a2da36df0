"""Structured logs: one JSON object per line on stderr.

Every line about a message carries msg_id and pool_id, so an operator (or a
log drain) can follow one intent through its transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
from collections import deque
from typing import Any

import aiohttp

from intake_cli.platform.display import safe

LOGGER_NAME = "intake"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Values carry webhook answers and DB2's errors: escaped, so a line
        # can neither drive the terminal nor forge the next line.
        fields = " ".join(f"{safe(k)}={safe(v)}" for k, v in getattr(record, "fields", {}).items())
        return f"{record.levelname.lower():7} {safe(record.getMessage())} {fields}".rstrip()


def configure(
    level: str = "info", fmt: str = "json", drain: logging.Handler | None = None
) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    if drain is not None:
        logger.addHandler(drain)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


class DrainBuffer(logging.Handler):
    """Lines waiting for the HTTP log drain.

    Bounded and never blocking: when the drain is down long enough to fill
    it, new lines are dropped and counted rather than slowing the worker.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.lines: deque[str] = deque()
        self.dropped = 0
        self.shipped = 0
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) >= self.capacity:
            self.dropped += 1
            return
        self.lines.append(self.format(record))


class LogDrain:
    """Ships the buffer to an HTTP endpoint as newline-delimited JSON, in batches."""

    def __init__(
        self, url: str, buffer: DrainBuffer, *, interval_s: float = 1.0, batch: int = 500
    ) -> None:
        self.url = url
        self.buffer = buffer
        self.interval_s = interval_s
        self.batch = batch
        self.failures = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            try:
                while True:
                    await asyncio.sleep(self.interval_s)
                    await self._ship_all(session)
            finally:
                # Stopping: one last attempt, bounded by the timeout.
                with contextlib.suppress(Exception):
                    await self._ship_all(session)

    async def _ship_all(self, session: aiohttp.ClientSession) -> None:
        while self.buffer.lines:
            chunk = list(itertools.islice(self.buffer.lines, self.batch))
            try:
                async with session.post(
                    self.url,
                    data=("\n".join(chunk) + "\n").encode(),
                    headers={"Content-Type": "application/x-ndjson"},
                ) as response:
                    if response.status >= 300:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
            except Exception:
                # Down: keep the lines for the next round; the buffer's bound
                # decides what is dropped meanwhile.
                self.failures += 1
                return
            for _ in chunk:
                self.buffer.lines.popleft()
            self.buffer.shipped += len(chunk)
