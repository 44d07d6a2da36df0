"""Requests per second of the HTTP clients the drain worker could use for its webhook.

Each client sends keep-alive JSON POSTs with an Idempotency-Key, from C
concurrent tasks for a fixed time, to the scriptable test webhook
(intake_cli.testhook) running in another process with no delay:

    (a) httpx.AsyncClient with its default transport
    (b) httpx.AsyncClient over httpx_aiohttp.AiohttpTransport
    (c) aiohttp.ClientSession directly
    (d) intake's WebhookClient.validate (aiohttp, plus signing-free request building
        and response classification)
    (e) pyreqwest (Rust's reqwest under Python) and (f) rnet (Rust, its own
        hyper stack): measured for CPU per request, not installed with intake
        (pip install pyreqwest rnet)

Run: python benchmarks/http_clients.py [--seconds 5] [--concurrency 64]
Prints a markdown table. Every client runs on the event loop the drain uses
(uvloop where installed). Client and server share the machine's cores, so the
CPU each side spent per request is shown too: it depends much less than the
rate on what else the machine is doing, and a webhook CPU share near 100 %
means the server, not the client, set the pace.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from intake_cli.engine.drain.webhook import Verdict, WebhookClient
from intake_cli.platform import eventloop

Send = Callable[[str], Awaitable[bool]]  # one POST for a key; True when answered 200


@dataclass
class Measurement:
    client: str
    requests: int
    errors: int
    seconds: float
    server_cpu_s: float  # CPU time the test webhook used meanwhile
    client_cpu_s: float  # CPU time this process used meanwhile

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def per_request_us(self, cpu_s: float) -> float:
        return cpu_s / max(1, self.requests) * 1e6


def body_for(key: str) -> bytes:
    message = {"v": 1, "pool_id": "bench", "user_id": key, "unit_no": 1, "idempotency_key": key}
    return json.dumps(message, separators=(",", ":")).encode()


def headers_for(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": key}


class Server:
    """The test webhook as a subprocess on a free loopback port."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="intake-bench-")
        ready = Path(self._dir.name) / "ready"
        log = Path(self._dir.name) / "stderr"
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "intake_cli.tools.testhook", "--port", "0",
                 "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace")
                self.close()
                raise SystemExit(f"the test webhook did not start:\n{output}")
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{int(ready.read_text())}"
        self.url = f"{self.base}/validate"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        httpx.post(f"{self.base}/_control/reset").raise_for_status()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._dir.cleanup()


async def drive(send: Send, concurrency: int, seconds: float) -> tuple[int, int, float]:
    """Run `concurrency` loops of `send` for `seconds`; (answered, errors, elapsed)."""
    keys = (f"bench-{n}" for n in itertools.count())
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            if await send(next(keys)):
                done += 1
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, errors, time.perf_counter() - started


async def measure(
    name: str, send: Send, server: Server, concurrency: int, seconds: float
) -> Measurement:
    # A short warm-up opens the connections, so the timed part is keep-alive traffic.
    await drive(send, concurrency, min(1.0, seconds / 5))
    await asyncio.to_thread(server.reset)
    server_before, client_before = server.cpu_seconds(), time.process_time()
    done, errors, elapsed = await drive(send, concurrency, seconds)
    server_cpu = server.cpu_seconds() - server_before
    client_cpu = time.process_time() - client_before
    await asyncio.to_thread(server.reset)
    return Measurement(name, done, errors, elapsed, server_cpu, client_cpu)


def httpx_limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def _bench_httpx_client(
    client: httpx.AsyncClient, label: str, server: Server, concurrency: int, seconds: float
) -> Measurement:
    async with client:

        async def send(key: str) -> bool:
            r = await client.post(server.url, content=body_for(key), headers=headers_for(key))
            return r.status_code == 200

        return await measure(label, send, server, concurrency, seconds)


async def bench_httpx(server: Server, concurrency: int, seconds: float) -> Measurement:
    client = httpx.AsyncClient(limits=httpx_limits(concurrency), timeout=10)
    return await _bench_httpx_client(
        client, "httpx AsyncClient (default transport)", server, concurrency, seconds
    )


async def bench_httpx_aiohttp(server: Server, concurrency: int, seconds: float) -> Measurement:
    transport = AiohttpTransport(limits=httpx_limits(concurrency))
    client = httpx.AsyncClient(transport=transport, timeout=10)
    return await _bench_httpx_client(
        client, "httpx + httpx_aiohttp.AiohttpTransport", server, concurrency, seconds
    )


async def bench_aiohttp(server: Server, concurrency: int, seconds: float) -> Measurement:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(key: str) -> bool:
            async with session.post(server.url, data=body_for(key), headers=headers_for(key)) as r:
                await r.read()
                return r.status == 200

        return await measure("aiohttp ClientSession", send, server, concurrency, seconds)


async def bench_webhook_client(server: Server, concurrency: int, seconds: float) -> Measurement:
    async with WebhookClient(timeout_s=10, max_connections=concurrency) as client:

        async def send(key: str) -> bool:
            message = {"v": 1, "pool_id": "bench", "user_id": key, "unit_no": 1}
            result = await client.validate(server.url, message, key)
            return result.verdict is Verdict.VALIDATED

        return await measure("intake WebhookClient.validate", send, server, concurrency, seconds)


async def bench_pyreqwest(server: Server, concurrency: int, seconds: float) -> Measurement:
    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().max_connections(concurrency).timeout(timedelta(seconds=10))
    async with builder.follow_redirects(False).build() as client:

        async def send(key: str) -> bool:
            request = client.post(server.url).body_bytes(body_for(key))
            for name, value in headers_for(key).items():
                request = request.header(name, value)
            async with request.build_streamed() as r:
                await r.bytes()
                return r.status == 200

        return await measure("pyreqwest", send, server, concurrency, seconds)


async def bench_rnet(server: Server, concurrency: int, seconds: float) -> Measurement:
    import rnet

    client = rnet.Client()

    async def send(key: str) -> bool:
        r = await client.post(server.url, body=body_for(key), headers=headers_for(key))
        await r.bytes()
        return r.status == 200

    return await measure("rnet", send, server, concurrency, seconds)


BENCHES = {
    "httpx": bench_httpx,
    "httpx-aiohttp": bench_httpx_aiohttp,
    "aiohttp": bench_aiohttp,
    "webhook": bench_webhook_client,
    "pyreqwest": bench_pyreqwest,
    "rnet": bench_rnet,
}
OPTIONAL = {"pyreqwest", "rnet"}


def table(results: list[Measurement], concurrency: int) -> str:
    lines = [
        f"| client ({concurrency} concurrent keep-alive POSTs) | requests | errors | seconds "
        "| req/s | client CPU µs/req | webhook CPU µs/req | webhook CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| {m.client} | {m.requests:,} | {m.errors:,} | {m.seconds:.1f} | {m.rate:,.0f} "
            f"| {m.per_request_us(m.client_cpu_s):.0f} | {m.per_request_us(m.server_cpu_s):.0f} "
            f"| {m.server_cpu_s / m.seconds:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed part of each run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--clients",
        default=",".join(name for name in BENCHES if name not in OPTIONAL),
        help=f"comma-separated subset of {list(BENCHES)} ({', '.join(sorted(OPTIONAL))}: "
        "not installed with intake)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.clients.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        parser.error(f"unknown clients: {', '.join(unknown)}")
    missing = [name for name in chosen if name in OPTIONAL and find_spec(name) is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (pip install {' '.join(missing)})")

    server = Server()
    try:
        results = []
        for name in chosen:
            m = eventloop.run(BENCHES[name](server, args.concurrency, args.seconds))
            print(f"{m.client}: {m.rate:,.0f} req/s", file=sys.stderr, flush=True)
            results.append(m)
    finally:
        server.close()
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(table(results, args.concurrency))


if __name__ == "__main__":
    main()
