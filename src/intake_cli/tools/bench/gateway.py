"""`intake bench gateway`: buyers claiming over HTTP, against the single claim.

A herd of distinct buyers, each with a valid HS256 token, posts claims to a
real `intake gateway` from wrk (an established load generator, driven by the
Lua script beside this file), keep-alive, 1,000 connections. The bar is the
single claim as pgbench sends it (one statement per buyer) on the same DB1
in the same run: the gateway's micro-batches must turn HTTP buyers arriving
one by one into more claims per second than that, with p99 under 250 ms.
Each combination of --workers, --max-batch and --max-wait-ms is one run.

A last phase asks whether position lookups cost DB1 anything: a steady
stream of GET …/claim (wrk paced by a per-request delay) runs beside a herd,
and the claim rate with it is compared with the rate without it, on the
same gateway. DB1's statements are counted twice: the gateway's own
counters (/healthz: claim batches and snapshot reads, per process) and
pg_stat_database's transactions (pg_stat_statements is not installed).

Everything runs on one throwaway DB1 (the bench library's cluster and
pgbench runner, as `intake bench claims` uses them); tokens are minted
before wrk starts, so signing costs the load generator nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt
import typer
import yaml

from intake_cli.engine import claims
from intake_cli.faces.gateway.app import DB1_CONNECTIONS
from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import free_port
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.tools.bench import chart as bench_chart
from intake_cli.tools.bench.common import cpu, events
from intake_cli.tools.bench.common.options import json_option, output_option, parse_numbers
from intake_cli.tools.bench.common.pgbench import (
    CLAIM,
    MAX_CLIENTS,
    POOL_ID,
    QUEUE,
    SPARE_CONNECTIONS,
    Bench,
    bench_db1,
    one,
)
from intake_cli.tools.bench.common.results import (
    Target,
    judged_on_median_round,
    measured_in_rounds,
    publish,
    say,
    targets_json,
    targets_markdown,
    times,
)

AUDIENCE = "authenticated"
LUA_SCRIPT = Path(__file__).with_name("wrk_gateway.lua")

DEFAULT_WORKERS = "1,2"
DEFAULT_MAX_BATCH = "100"
DEFAULT_MAX_WAIT_MS = "2"
DEFAULT_PGBENCH_CLIENTS = "256"
DEFAULT_CONNECTIONS = 1000
DEFAULT_DURATION = 10
# Distinct buyers per herd run: above what a run can claim in its seconds,
# so nobody asks twice (a run that wraps round says so in its report).
DEFAULT_BUYERS = 200_000
DEFAULT_LOOKUP_RATE = 10_000
# Buyers who claimed before the lookup phase and then keep asking where
# their claim stands (ten times a second each at the default rate: the
# per-buyer limit is lifted for the bench). Each process watches them all.
DEFAULT_LOOKUP_BUYERS = 1_000
# Each lookup connection asks once per cycle (its wait, then the answer's
# time), so connections / cycle is the rate. A cycle of 100 ms, of which the
# answer is allowed 10: at 10,000/s, 1,000 connections waiting 90 ms each.
# (With 100 connections waiting 10 ms, answers of ~10 ms beside a herd
# halved the rate asked for.)
LOOKUP_CYCLE_S = 0.1
LOOKUP_ANSWER_S = 0.01
MIN_LOOKUP_CONNECTIONS = 10
# A buyer's first lookup in a process waits for the next snapshot refresh
# (up to ~2 s), which is the start of a crowd, not its steady state: before
# the measured herd, every process is made to watch every lookup buyer by
# a warm-up with one connection per buyer, for at most this long.
LOOKUP_WARMUP_S = 60.0
# Then the paced stream runs this long before the herd starts.
LOOKUP_SETTLE_S = 2.0
# Lookups with nothing beside them, as fast as the gateway answers: its own
# CPU per lookup, read directly rather than as the difference of two herds.
LOOKUPS_ALONE_S = 3
# Claims/s no machine is expected to pass in single claims: the pgbench
# run's pool is sized from it so that it never sells out.
SINGLE_CLAIM_CEILING_PER_S = 40_000
# wrk's own threads: one per core of the machine the bar was set on.
WRK_THREADS = 2
# A request slower than this counts as a timeout, not a latency: well above
# the p99 bar, so a slow herd still shows its tail.
WRK_TIMEOUT_S = 10
# Seconds between two reads of the gateway's counters that must agree.
SETTLE_S = 0.3
GATEWAY_START_S = 60.0

# A smoke run: 1 s herds, with buyers to spare for 20,000 claims/s.
QUICK_DURATION = 1
QUICK_CONNECTIONS = 50
QUICK_BUYERS = 20_000
QUICK_PGBENCH_CLIENTS = 16
QUICK_LOOKUP_RATE = 200
QUICK_LOOKUP_BUYERS = 100
QUICK_LOOKUP_CONNECTIONS = 10

# Issue 24 raised it from 1.5x (issue 18).
TARGET_VS_SINGLE = 2.0
TARGET_P99_MS = 250.0
TARGET_LOOKUP_DROP = 0.10
TARGET_LOOKUPS_PER_S = 10_000.0
# Issue 24: the gateway's own CPU per request (from /proc; a lookup's is
# what the gateway spent beside the lookups, less the claims at the herd's
# own cost per claim).
TARGET_CPU_US_PER_CLAIM = 60.0
TARGET_CPU_US_PER_LOOKUP = 40.0


@dataclass(frozen=True)
class Plan:
    workers: tuple[int, ...]
    max_batch: tuple[int, ...]
    max_wait_ms: tuple[float, ...]
    pgbench_clients: tuple[int, ...]
    connections: int
    duration: int
    buyers: int
    lookup_rate: int
    lookup_buyers: int
    lookup_connections: int
    lookups: bool = True

    @property
    def settings(self) -> tuple[tuple[int, int, float], ...]:
        return tuple(itertools.product(self.workers, self.max_batch, self.max_wait_ms))


# -- tokens -------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_tokens(secret: str, buyers: list[str], expires: int) -> list[str]:
    """HS256 tokens as Supabase issues them, one per buyer.

    Signed with hmac directly: PyJWT takes ~60 µs a token, too slow for
    hundreds of thousands before each run. The first token is checked with
    PyJWT, so a mistake here fails the bench rather than the gateway's answers.
    """
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    key = secret.encode()
    tokens = []
    for buyer in buyers:
        body = json.dumps(
            {"sub": buyer, "aud": AUDIENCE, "role": "authenticated", "exp": expires},
            separators=(",", ":"),
        )
        signing_input = f"{header}.{_b64(body.encode())}"
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
        tokens.append(f"{signing_input}.{_b64(signature)}")
    if tokens:
        checked = jwt.decode(tokens[0], secret, algorithms=["HS256"], audience=AUDIENCE)
        if checked["sub"] != buyers[0]:
            raise IntakeError("a minted token did not verify")
    return tokens


def write_tokens(prefix: Path, tokens: list[str], threads: int) -> Path:
    """Deal the tokens round-robin into one file per wrk thread: <prefix>.<n>."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for n in range(threads):
        prefix.with_name(f"{prefix.name}.{n}").write_text(
            "\n".join(tokens[n::threads]) + "\n", encoding="ascii"
        )
    return prefix


# -- wrk ----------------------------------------------------------------------


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise UsageError("wrk was not found: install it (Debian: apt-get install wrk)")
    return found


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    # How many times a thread ran through its tokens (buyers sent twice).
    wrapped: int


_RESULT = re.compile(r"^INTAKE_WRK (\{.*\})$", re.MULTILINE)


def parse_wrk(stdout: str) -> WrkResult:
    found = _RESULT.search(stdout)
    if not found:
        raise IntakeError(f"wrk's result line was not found:\n{stdout.strip()[-2000:]}")
    raw = json.loads(found.group(1))
    seconds = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        seconds=round(seconds, 3),
        requests_per_s=round(raw["requests"] / seconds, 1) if seconds else 0.0,
        latency_ms={k: round(v / 1000, 3) for k, v in raw["latency_us"].items()},
        errors=raw["errors"],
        wrapped=raw["wrapped"],
    )


@dataclass
class WrkRun:
    proc: subprocess.Popen[str]
    stdout: Path
    stderr: Path

    def finish(self) -> WrkResult:
        self.proc.wait()
        out = self.stdout.read_text(errors="replace")
        if self.proc.returncode != 0:
            err = self.stderr.read_text(errors="replace")
            raise IntakeError(
                f"wrk failed ({self.proc.returncode}): {(err or out).strip()[-2000:]}"
            )
        return parse_wrk(out)


def start_wrk(
    url: str,
    tokens: Path,
    *,
    method: str,
    connections: int,
    threads: int,
    seconds: float,
    delay_ms: float | None = None,
) -> WrkRun:
    logs = tokens.parent.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    stdout, stderr = logs / f"wrk-{stamp}.out", logs / f"wrk-{stamp}.err"
    env = {
        **os.environ,
        "INTAKE_WRK_TOKENS": str(tokens),
        "INTAKE_WRK_METHOD": method,
        **({"INTAKE_WRK_DELAY_MS": f"{delay_ms:g}"} if delay_ms else {}),
    }
    args = [
        wrk_path(),
        "-t", str(threads),
        "-c", str(connections),
        "-d", f"{max(1, round(seconds))}s",
        "--timeout", f"{WRK_TIMEOUT_S}s",
        "-s", str(LUA_SCRIPT),
        url,
    ]  # fmt: skip
    # Files, not pipes: nobody reads wrk's output until it ends.
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env)
    return WrkRun(proc, stdout, stderr)


# -- the gateway under test ----------------------------------------------------


def _config(path: Path, dsn: str, units: int, max_batch: int, max_wait_ms: float) -> Path:
    """An intake.yaml for the bench's DB1. DB2 is never reached by the gateway."""
    document = {
        "db1": {"dsn": dsn},
        "db2": {"dsn": dsn},
        "queue_name": QUEUE,
        "pools": [
            {
                "pool_id": POOL_ID,
                "inventory": units,
                "validation_webhook_url": "http://127.0.0.1:9/validate",
            }
        ],
        "gateway": {
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            # The bench measures claims, not the limits: every buyer comes
            # from 127.0.0.1, and lookup buyers ask several times a second.
            "per_ip_rate": 1_000_000,
            "per_ip_burst": 1_000_000,
            "per_buyer_rate": 1_000_000,
            "per_buyer_burst": 1_000_000,
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _get_json(url: str) -> dict[str, Any]:
    # A fresh connection each time, so SO_REUSEPORT may hand it to another worker.
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Gateway:
    url: str
    workers: int
    proc: subprocess.Popen[str]

    @property
    def claim_url(self) -> str:
        return f"{self.url}/v1/pools/{POOL_ID}/claim"

    def counters(self) -> dict[str, int]:
        """Every worker's /healthz counters, summed (each answer is one process's)."""
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(200 * self.workers):
            found = _get_json(f"{self.url}/healthz")
            seen[found["pid"]] = found
            if len(seen) == self.workers:
                break
        keys = ("claims", "claim_batches", "snapshot_queries", "reads")
        totals = {key: sum(int(s[key]) for s in seen.values()) for key in keys}
        totals["workers_seen"] = len(seen)
        # The fewest buyers any process watches: every one watches them all
        # once the lookup warm-up is done.
        totals["watched_min"] = min((int(s["watched"]) for s in seen.values()), default=0)
        return totals


@contextmanager
def running_gateway(
    workdir: Path,
    dsn: str,
    secret: str,
    workers: int,
    max_batch: int,
    max_wait_ms: float,
    units: int,
) -> Iterator[Gateway]:
    """`intake gateway` as an operator starts it, in its own process group."""
    name = f"gateway-w{workers}-b{max_batch}-m{max_wait_ms:g}"
    config = _config(workdir / f"{name}.yaml", dsn, units, max_batch, max_wait_ms)
    port = free_port()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    log = (workdir / "logs" / f"{name}.log").open("w")
    command = [sys.executable, "-m", "intake_cli", "-c", str(config), "gateway"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "INTAKE_JWT_SECRET": secret},
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", workers, proc)
    try:
        deadline = time.monotonic() + GATEWAY_START_S
        while True:
            try:
                # Every worker up: each has bound the port and opened its DB1 pool.
                if gateway.counters()["workers_seen"] == workers:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (workdir / "logs" / f"{name}.log").read_text(errors="replace")[-2000:]
                raise IntakeError(f"intake gateway did not start: {tail}")
            time.sleep(0.2)
        yield gateway
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- the runs -------------------------------------------------------------------


def _db1_transactions(db1: Bench) -> int:
    return one(db1.conn, "db1_transactions.sql")


def herd(db1: Bench, gateway: Gateway, tokens: Path, plan: Plan, threads: int) -> dict[str, Any]:
    """One wrk herd of POSTs; claims counted in DB1's queue, statements around it."""
    queued, counted, xacts = db1.queued(), gateway.counters(), _db1_transactions(db1)
    cpu_before = _cpu(db1, gateway)
    opened = time.monotonic()
    result = start_wrk(
        gateway.claim_url,
        tokens,
        method="POST",
        connections=plan.connections,
        threads=threads,
        seconds=plan.duration,
    ).finish()
    # Batches still out when wrk stopped land before anything is counted, so
    # the gateway's answers and DB1's queue describe the same claims.
    after = _settled(gateway)
    # The gateway's counters cover this window (wrk's run and the settling).
    window = time.monotonic() - opened
    used = _cpu_since(cpu_before, db1, gateway)
    claimed = db1.queued() - queued
    xacts = _db1_transactions(db1) - xacts
    kept = ("claims", "claim_batches", "snapshot_queries", "reads")
    delta = {key: after[key] - counted[key] for key in kept}
    return {
        "connections": plan.connections,
        "wrk": asdict(result),
        # The claims DB1 really made (intents queued), per second of the herd.
        "claims": claimed,
        "claims_per_s": round(claimed / result.seconds, 1) if result.seconds else 0.0,
        "p99_ms": result.latency_ms["p99"],
        "non_2xx": result.errors["status"],
        "buyers_reused": result.wrapped > 0,
        "gateway": delta,
        "avg_batch": round(delta["claims"] / delta["claim_batches"], 1)
        if delta["claim_batches"]
        else None,
        "db1_transactions": xacts,
        "window_s": round(window, 3),
        # Where the machine's cores went during the window (CPU seconds).
        "cpu_s": used,
        "cores_busy": round(sum(used.values()) / window, 2) if window else None,
        "gateway_cpu_us_per_claim": round(used["gateway"] * 1e6 / claimed) if claimed else None,
        "cpu_us_per_claim": _cpu_per_claim(used, claimed),
    }


def _cpu(db1: Bench, gateway: Gateway | None = None) -> dict[str, float]:
    """CPU seconds so far of the gateway's processes, DB1's server, and the load
    generators (wrk): those running, and those this process has waited for."""
    table = cpu.processes()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = sum(
        cpu.tree_cpu_s(table, pid)
        for pid, process in table.items()
        if process.parent == os.getpid() and (gateway is None or pid != gateway.proc.pid)
    )
    return {
        "gateway": cpu.tree_cpu_s(table, gateway.proc.pid) if gateway else 0.0,
        "db1": cpu.cluster_cpu_s(db1.cluster.datadir, table),
        # wrk, or pgbench for the single claim.
        "wrk": reaped.ru_utime + reaped.ru_stime + running,
    }


def _cpu_since(
    before: dict[str, float], db1: Bench, gateway: Gateway | None = None
) -> dict[str, float]:
    """CPU seconds of each part since `before` (a reading of `_cpu`)."""
    return {key: round(v - before[key], 3) for key, v in _cpu(db1, gateway).items()}


def _cpu_per_claim(used: dict[str, float], claims: int) -> float | None:
    """CPU µs per claim over every process that took part: where CPU is what
    runs out, claims/s scale with its inverse."""
    return round(sum(used.values()) * 1e6 / claims, 1) if claims else None


def _settled(gateway: Gateway) -> dict[str, int]:
    """The gateway's counters once two reads a moment apart agree."""
    before = gateway.counters()
    for _ in range(50):
        time.sleep(SETTLE_S)
        now = gateway.counters()
        if now["claims"] == before["claims"]:
            return now
        before = now
    return before


def _preclaim(db1: Bench, buyers: list[str]) -> None:
    """The lookup phase's buyers claim first, straight on DB1."""
    for start in range(0, len(buyers), claims.MAX_BATCH):
        answers = claims.claim_batch(db1.conn, POOL_ID, buyers[start : start + claims.MAX_BATCH])
        if any(a.outcome != "claimed" for a in answers):
            raise IntakeError("the lookup buyers could not all claim before the lookup phase")


def lookups(
    db1: Bench,
    workdir: Path,
    secret: str,
    plan: Plan,
    chosen: tuple[int, int, float],
    files: dict[str, Path],
    lookup_buyers: list[str],
) -> dict[str, Any]:
    """A herd alone, then a herd beside a steady stream of position lookups."""
    workers, max_batch, max_wait_ms = chosen
    units = 2 * plan.buyers + plan.lookup_buyers
    db1.reset("claim", units)
    _preclaim(db1, lookup_buyers)
    # Each connection waits this long before each lookup: its cycle less the
    # time allowed for the answer (see LOOKUP_CYCLE_S).
    cycle_s = plan.lookup_connections / plan.lookup_rate
    delay_ms = max(1.0, (cycle_s - LOOKUP_ANSWER_S) * 1000)
    with running_gateway(db1.workdir, db1.cluster.dsn, secret, *chosen, units) as gateway:
        say(f"    herd alone ({workers} workers, batch {max_batch}, wait {max_wait_ms:g} ms)")
        alone = herd(db1, gateway, files["herd"], plan, WRK_THREADS)
        say(f"      {alone['claims_per_s']:,.0f} claims/s, p99 {alone['p99_ms']} ms")
        say(f"    every worker watching the {plan.lookup_buyers:,} lookup buyers")
        _warm_up(gateway, files["lookup"], plan)
        by_themselves = _lookups_alone(db1, gateway, files["lookup"], plan)
        say(
            f"    lookups alone: {by_themselves['lookups_per_s']:,.0f}/s, gateway CPU "
            f"{by_themselves['gateway_cpu_us_per_lookup']} µs/lookup"
        )
        say(f"    herd beside ~{plan.lookup_rate:,}/s lookups by {plan.lookup_buyers:,} buyers")
        stream = start_wrk(
            gateway.claim_url,
            files["lookup"],
            method="GET",
            connections=plan.lookup_connections,
            threads=1,
            seconds=LOOKUP_SETTLE_S + plan.duration + 2,
            delay_ms=delay_ms,
        )
        time.sleep(LOOKUP_SETTLE_S)
        beside = herd(db1, gateway, files["herd2"], plan, WRK_THREADS)
        looked = stream.finish()
    seconds = beside["window_s"]
    reads = beside["gateway"]["reads"]
    snapshot_reads = beside["gateway"]["snapshot_queries"]
    drop = 1 - beside["claims_per_s"] / alone["claims_per_s"] if alone["claims_per_s"] else None
    per_lookup = _gateway_cpu_us_per_lookup(alone, beside, reads)
    say(
        f"      {beside['claims_per_s']:,.0f} claims/s, p99 {beside['p99_ms']} ms; "
        f"{reads / seconds:,.0f} lookups/s, {snapshot_reads} snapshot reads; gateway CPU "
        f"{alone['gateway_cpu_us_per_claim']} µs/claim (alone), {per_lookup} µs/lookup"
    )
    return {
        "workers": workers,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "lookup_rate_asked": plan.lookup_rate,
        "lookup_buyers": plan.lookup_buyers,
        "lookup_connections": plan.lookup_connections,
        "lookup_delay_ms": round(delay_ms, 3),
        "herd_alone": alone,
        "lookups_alone": by_themselves,
        "herd_beside_lookups": beside,
        # Lookups answered while the herd ran (the gateway's count), per second.
        "lookups_during_herd": reads,
        "lookups_per_s": round(reads / seconds, 1) if seconds else 0.0,
        "lookup_wrk": asdict(looked),
        "snapshot_reads_during_herd": snapshot_reads,
        # One read a second per process, the first at any moment of the
        # window's first second.
        "snapshot_reads_allowed": workers * math.ceil(seconds + 1),
        "db1_statements_per_lookup": round(snapshot_reads / reads, 6) if reads else None,
        "gateway_cpu_us_per_lookup": per_lookup,
        "claim_rate_drop": round(drop, 4) if drop is not None else None,
    }


def _lookups_alone(db1: Bench, gateway: Gateway, tokens: Path, plan: Plan) -> dict[str, Any]:
    """Lookups on the lookup phase's connections, closed loop, nothing beside them."""
    counted, cpu_before = gateway.counters(), _cpu(db1, gateway)
    result = start_wrk(
        gateway.claim_url,
        tokens,
        method="GET",
        connections=plan.lookup_connections,
        threads=1,
        seconds=min(LOOKUPS_ALONE_S, plan.duration),
    ).finish()
    reads = gateway.counters()["reads"] - counted["reads"]
    used = _cpu_since(cpu_before, db1, gateway)
    return {
        "connections": plan.lookup_connections,
        "wrk": asdict(result),
        "lookups": reads,
        "lookups_per_s": round(reads / result.seconds, 1) if result.seconds else 0.0,
        "non_2xx": result.errors["status"],
        "cpu_s": used,
        "gateway_cpu_us_per_lookup": round(used["gateway"] * 1e6 / reads, 1) if reads else None,
    }


def _gateway_cpu_us_per_lookup(
    alone: dict[str, Any], beside: dict[str, Any], lookups: int
) -> float | None:
    """The gateway's CPU beside the lookups, less what its claims cost when
    alone (per claim, the same gateway), over the lookups answered."""
    if not lookups or not alone["claims"]:
        return None
    per_claim_s = alone["cpu_s"]["gateway"] / alone["claims"]
    spent = beside["cpu_s"]["gateway"] - beside["claims"] * per_claim_s
    return round(spent * 1e6 / lookups, 1)


def _warm_up(gateway: Gateway, tokens: Path, plan: Plan) -> None:
    """Lookups on one connection per buyer until every process watches every buyer."""
    warm = start_wrk(
        gateway.claim_url,
        tokens,
        method="GET",
        connections=min(plan.lookup_buyers, 1000),
        threads=1,
        seconds=LOOKUP_WARMUP_S,
    )
    try:
        deadline = time.monotonic() + LOOKUP_WARMUP_S
        while gateway.counters()["watched_min"] < plan.lookup_buyers:
            if warm.proc.poll() is not None or time.monotonic() > deadline:
                raise IntakeError(
                    "the lookup warm-up ended before every worker watched every buyer"
                )
            time.sleep(0.5)
    finally:
        if warm.proc.poll() is None:
            warm.proc.terminate()
        warm.proc.wait()


def targets(document: dict[str, Any]) -> list[Target]:
    runs = document["herd"]
    found = []
    if runs:
        fast_enough = [r for r in runs if r["p99_ms"] < TARGET_P99_MS]
        best = max(fast_enough or runs, key=lambda r: r["claims_per_s"])
        ratio = best["vs_single_claim"]
        found.append(
            Target.at_least(
                f"gateway >= {TARGET_VS_SINGLE:g}x the single claim "
                f"with p99 < {TARGET_P99_MS:g} ms",
                ratio,
                TARGET_VS_SINGLE,
                f"{ratio:.2f}x, p99 {best['p99_ms']:.0f} ms ({best['workers']} workers, "
                f"batch {best['max_batch']}, wait {best['max_wait_ms']:g} ms)",
            ).unless(bool(fast_enough), f"no run with p99 < {TARGET_P99_MS:g} ms")
        )
        # Issue 24's cost per request, judged on the cheapest run per claim.
        cheapest = min(
            (r for r in runs if r.get("gateway_cpu_us_per_claim") is not None),
            key=lambda r: r["gateway_cpu_us_per_claim"],
            default=None,
        )
        if cheapest is not None:
            found.append(
                Target.at_most(
                    f"gateway CPU <= {TARGET_CPU_US_PER_CLAIM:g} µs per claim",
                    cheapest["gateway_cpu_us_per_claim"],
                    TARGET_CPU_US_PER_CLAIM,
                    f"{cheapest['gateway_cpu_us_per_claim']} µs ({cheapest['workers']} workers)",
                )
            )
    phase = document.get("lookups") or {}
    # Read directly (lookups alone); the difference of two herds is shown too.
    measured = phase.get("lookups_alone") or {}
    if measured.get("gateway_cpu_us_per_lookup") is not None:
        per_lookup = measured["gateway_cpu_us_per_lookup"]
        found.append(
            Target.at_most(
                f"gateway CPU <= {TARGET_CPU_US_PER_LOOKUP:g} µs per lookup",
                per_lookup,
                TARGET_CPU_US_PER_LOOKUP,
                f"{per_lookup} µs alone ({phase.get('gateway_cpu_us_per_lookup')} µs "
                "beside a herd, by difference)",
            )
        )
    if phase:
        drop = phase["claim_rate_drop"]
        allowed = phase["snapshot_reads_allowed"]
        found += [
            Target.at_most(
                f"lookups lower the claim rate by <= {TARGET_LOOKUP_DROP:.0%}",
                drop,
                TARGET_LOOKUP_DROP,
                "-" if drop is None else f"{drop:.1%}",
            ),
            Target.at_least(
                f"lookups served beside the herd >= {TARGET_LOOKUPS_PER_S:,.0f}/s",
                phase["lookups_per_s"],
                TARGET_LOOKUPS_PER_S,
                f"{phase['lookups_per_s']:,.0f}/s",
            ),
            Target.at_most(
                "no DB1 statement per lookup: <= 1 snapshot read per worker per second",
                phase["snapshot_reads_during_herd"],
                allowed,
                f"{phase['snapshot_reads_during_herd']} reads (at most {allowed}) for "
                f"{phase['lookups_during_herd']:,} lookups",
            ),
        ]
    return found


def measure(plan: Plan, workdir: Path) -> dict[str, Any]:
    threads = min(WRK_THREADS, plan.connections)
    settings = EmbeddedSettings(
        max_connections=max(plan.pgbench_clients)
        + max(plan.workers) * DB1_CONNECTIONS
        + SPARE_CONNECTIONS,
        synchronous_commit=True,
        # Every gateway connection may hold a whole batch's advisory locks.
        max_locks_per_transaction=max(64, max(plan.max_batch) + 64),
    )
    secret = secrets.token_urlsafe(48)
    expires = int(time.time()) + 24 * 3600
    say(f"minting {2 * plan.buyers + plan.lookup_buyers:,} tokens")
    herd_buyers = [str(uuid.uuid4()) for _ in range(2 * plan.buyers)]
    lookup_buyers = [str(uuid.uuid4()) for _ in range(plan.lookup_buyers)]
    tokens = workdir / "tokens"
    files = {
        "herd": write_tokens(
            tokens / "herd", mint_tokens(secret, herd_buyers[: plan.buyers], expires), threads
        ),
        "herd2": write_tokens(
            tokens / "herd2", mint_tokens(secret, herd_buyers[plan.buyers :], expires), threads
        ),
        "lookup": write_tokens(tokens / "lookup", mint_tokens(secret, lookup_buyers, expires), 1),
    }
    with bench_db1(workdir, settings) as db1:
        machine = db1.machine()
        # wrk prints its version before its usage, and exits 1.
        shown = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
        machine["wrk"] = (shown.stdout + shown.stderr).strip().split("\n")[0]
        document: dict[str, Any] = {
            "machine": machine,
            "settings": {
                "workers": list(plan.workers),
                "max_batch": list(plan.max_batch),
                "max_wait_ms": list(plan.max_wait_ms),
                "pgbench_clients": list(plan.pgbench_clients),
                "connections": plan.connections,
                "wrk_threads": threads,
                "duration_s": plan.duration,
                "buyers_per_run": plan.buyers,
                "keep_alive": True,
                "synchronous_commit": settings.synchronous_commit,
                "max_connections": settings.max_connections,
                "db1_connections_per_worker": DB1_CONNECTIONS,
            },
            "single_claim": [],
            "herd": [],
        }
        steps = len(plan.pgbench_clients) + len(plan.settings) + (1 if plan.lookups else 0)
        step = 0
        for clients in plan.pgbench_clients:
            step += 1
            say(f"[{step}/{steps}] single claim (pgbench), {clients} clients, {plan.duration} s")
            db1.reset("claim", max(plan.buyers, SINGLE_CLAIM_CEILING_PER_S * plan.duration))
            cpu_before = _cpu(db1)
            run = db1.run(CLAIM, clients, plan.duration)
            used = {k: v for k, v in _cpu_since(cpu_before, db1).items() if k != "gateway"}
            single_run = {
                **asdict(run),
                # DB1's server and pgbench ("wrk" in _cpu's terms).
                "cpu_s": {"db1": used["db1"], "pgbench": used["wrk"]},
                "cpu_us_per_claim": _cpu_per_claim(used, run.intents or 0),
            }
            say(f"    {run.claims_per_s:,.0f} claims/s, p99 {run.latency_ms['p99']} ms")
            document["single_claim"].append(single_run)
        best_single = max(document["single_claim"], key=lambda r: r["claims_per_s"])
        single = best_single["claims_per_s"]
        document["single_claim_best_per_s"] = single
        for workers, max_batch, max_wait_ms in plan.settings:
            step += 1
            say(
                f"[{step}/{steps}] gateway, {workers} workers, batch {max_batch}, "
                f"wait {max_wait_ms:g} ms, {plan.connections} connections, {plan.duration} s"
            )
            db1.reset("claim", plan.buyers)
            with running_gateway(
                workdir, db1.cluster.dsn, secret, workers, max_batch, max_wait_ms, plan.buyers
            ) as gateway:
                herd_run = herd(db1, gateway, files["herd"], plan, threads)
            herd_run.update(workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms)
            herd_run["vs_single_claim"] = (
                round(herd_run["claims_per_s"] / single, 3) if single else None
            )
            # Claims per CPU-second against the single claim's: what the rate
            # ratio tends to where the cores, all busy, are the limit.
            mine, theirs = herd_run["cpu_us_per_claim"], best_single["cpu_us_per_claim"]
            herd_run["vs_single_claim_per_cpu"] = (
                round(theirs / mine, 3) if mine and theirs else None
            )
            say(
                f"    {herd_run['claims_per_s']:,.0f} claims/s "
                f"({herd_run['vs_single_claim']}x single), "
                f"p99 {herd_run['p99_ms']} ms, avg batch {herd_run['avg_batch']}"
                + (" (buyers reused: raise --buyers)" if herd_run["buyers_reused"] else "")
            )
            document["herd"].append(herd_run)
        if plan.lookups:
            step += 1
            best = max(document["herd"], key=lambda r: r["claims_per_s"])
            chosen = (best["workers"], best["max_batch"], best["max_wait_ms"])
            say(f"[{step}/{steps}] position lookups beside a herd")
            document["lookups"] = lookups(db1, workdir, secret, plan, chosen, files, lookup_buyers)
        document["targets"] = targets_json(targets(document))
    return document


# -- output -------------------------------------------------------------------


def markdown(document: dict[str, Any]) -> str:
    m, s = document["machine"], document["settings"]
    lines = [
        f"{m['cores']} cores, PostgreSQL {m['postgresql']}, synchronous_commit = on, "
        f"{s['duration_s']} s per run, wrk -t{s['wrk_threads']} -c{s['connections']} "
        "(keep-alive), one distinct buyer per request",
        "",
        "| single claim (pgbench) | clients | claims/s | p50 ms | p99 ms "
        "| CPU s DB1 / pgbench | CPU µs/claim |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["single_claim"]:
        lat = run["latency_ms"]
        lines.append(
            f"| intake claim | {run['clients']} | {run['claims_per_s']:,.0f} | "
            f"{lat['p50']:.2f} | {lat['p99']:.2f} | {run['cpu_s']['db1']:.1f} / "
            f"{run['cpu_s']['pgbench']:.1f} | {run['cpu_us_per_claim']} |"
        )
    lines += [
        "",
        "| workers | max batch | max wait ms | claims/s | x single | p50 ms | p99 ms "
        "| avg batch | non-2xx | DB1 xacts | CPU s gateway / DB1 / wrk | CPU µs/claim "
        "(gateway) | x single per CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in document["herd"]:
        lat = run["wrk"]["latency_ms"]
        flag = " (buyers reused)" if run["buyers_reused"] else ""
        lines.append(
            f"| {run['workers']} | {run['max_batch']} | {run['max_wait_ms']:g} | "
            f"{run['claims_per_s']:,.0f}{flag} | {run['vs_single_claim']:.2f}x | "
            f"{lat['p50']:.1f} | {lat['p99']:.1f} | {run['avg_batch']} | {run['non_2xx']} | "
            f"{run['db1_transactions']:,} | {_cpu_shown(run)} | {run['cpu_us_per_claim']} "
            f"({run['gateway_cpu_us_per_claim']}) | {times(run['vs_single_claim_per_cpu'], 2)} |"
        )
    phase = document.get("lookups")
    if phase:
        alone, beside = phase["herd_alone"], phase["herd_beside_lookups"]
        drop = phase["claim_rate_drop"]
        lines += [
            "",
            f"Position lookups ({phase['workers']} workers, batch {phase['max_batch']}, "
            f"wait {phase['max_wait_ms']:g} ms): a herd alone made "
            f"{alone['claims_per_s']:,.0f} claims/s (p99 {alone['p99_ms']:.0f} ms); beside "
            f"{phase['lookups_per_s']:,.0f} lookups/s (asked {phase['lookup_rate_asked']:,}/s, "
            f"{phase['lookup_buyers']:,} buyers) it made {beside['claims_per_s']:,.0f} claims/s "
            f"(p99 {beside['p99_ms']:.0f} ms), "
            + ("-" if drop is None else f"a change of {-drop:+.1%}")
            + f". DB1 during that herd: {beside['gateway']['claim_batches']:,} claim batches, "
            f"{phase['snapshot_reads_during_herd']} snapshot reads for "
            f"{phase['lookups_during_herd']:,} lookups, {beside['db1_transactions']:,} "
            f"transactions (herd alone: {alone['db1_transactions']:,}). CPU s gateway / DB1 / "
            f"wrk: {_cpu_shown(beside)} (herd alone: {_cpu_shown(alone)}). Gateway CPU: "
            f"{alone['gateway_cpu_us_per_claim']} µs per claim (herd alone), "
            f"{(phase.get('lookups_alone') or {}).get('gateway_cpu_us_per_lookup')} µs per "
            "lookup (lookups alone), "
            f"{phase.get('gateway_cpu_us_per_lookup')} µs per lookup beside the herd (the rest "
            "of its CPU beside the lookups).",
        ]
    earlier = document.get("earlier_rounds") or []
    if earlier:
        lines += [
            "",
            f"Each bar is judged on the median of {len(earlier) + 1} rounds; the tables "
            "above are the last round's.",
        ]
    lines += ["", targets_markdown(document["targets"])]
    return "\n".join(lines)


def judged_on_median(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The last round's document, its bars judged on the median round of all of them."""
    return judged_on_median_round(documents, [targets(document) for document in documents])


def _cpu_shown(run: dict[str, Any]) -> str:
    used = run["cpu_s"]
    return f"{used['gateway']:.1f} / {used['db1']:.1f} / {used['wrk']:.1f}"


def gateway_command(
    workers: str = typer.Option(
        DEFAULT_WORKERS, "--workers", help="Gateway processes, comma-separated (one run each)."
    ),
    max_batch: str = typer.Option(
        DEFAULT_MAX_BATCH, "--max-batch", help="Buyers per claim_resources call, comma-separated."
    ),
    max_wait_ms: str = typer.Option(
        DEFAULT_MAX_WAIT_MS, "--max-wait-ms", help="Batch wait (ms), comma-separated."
    ),
    pgbench_clients: str = typer.Option(
        DEFAULT_PGBENCH_CLIENTS,
        "--pgbench-clients",
        help="Client counts for the single-claim bar, comma-separated (the best is the bar).",
    ),
    connections: int = typer.Option(
        DEFAULT_CONNECTIONS, "--connections", min=1, max=10_000, help="wrk's connections."
    ),
    duration: int = typer.Option(DEFAULT_DURATION, "--duration", min=1, help="Seconds per run."),
    buyers: int = typer.Option(
        DEFAULT_BUYERS, "--buyers", min=1, help="Distinct buyers (tokens) per herd run."
    ),
    lookup_rate: int = typer.Option(
        DEFAULT_LOOKUP_RATE, "--lookup-rate", min=0, help="GET …/claim per second (0: skip)."
    ),
    lookup_buyers: int = typer.Option(
        DEFAULT_LOOKUP_BUYERS,
        "--lookup-buyers",
        min=1,
        max=100_000,
        help="Buyers whose claims the lookups ask about.",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help=f"Smoke test: one worker, {QUICK_CONNECTIONS} connections, {QUICK_DURATION} s runs, "
        f"{QUICK_BUYERS:,} buyers.",
    ),
    rounds: int = typer.Option(
        1,
        "--rounds",
        min=1,
        max=9,
        help="Measure everything this many times and judge each bar on its median round: "
        "one round's figures move with the machine's speed from one minute to the next.",
    ),
    as_json: bool = json_option(),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp dir (wrk and gateway logs)."),
    output: Path | None = output_option(),
    chart: Path | None = typer.Option(
        None,
        "--chart",
        help="Also draw claims/s by setting against the single claim as a PNG (a file, "
        "or a directory). Needs matplotlib (the 'bench' extra).",
    ),
) -> None:
    """Claims over HTTP through `intake gateway` (wrk, distinct JWT buyers) against the
    single claim (pgbench) on the same throwaway DB1, and position lookups beside a herd.

    Needs wrk (Debian: apt-get install wrk). Starts its own durable DB1 cluster
    and gateway processes; removes everything afterwards.
    """
    if chart is not None:
        bench_chart.require_matplotlib()
    wrk_path()
    if quick:
        plan = Plan(
            workers=(1,),
            max_batch=(100,),
            max_wait_ms=(2.0,),
            pgbench_clients=(QUICK_PGBENCH_CLIENTS,),
            connections=QUICK_CONNECTIONS,
            duration=QUICK_DURATION,
            buyers=QUICK_BUYERS,
            lookup_rate=QUICK_LOOKUP_RATE,
            lookup_buyers=QUICK_LOOKUP_BUYERS,
            lookup_connections=QUICK_LOOKUP_CONNECTIONS,
        )
    else:
        plan = Plan(
            workers=parse_numbers("--workers", workers, 1, 64),
            max_batch=parse_numbers("--max-batch", max_batch, 1, claims.MAX_BATCH),
            max_wait_ms=parse_numbers("--max-wait-ms", max_wait_ms, 0.1, 1000.0, float),
            pgbench_clients=parse_numbers("--pgbench-clients", pgbench_clients, 1, MAX_CLIENTS),
            connections=connections,
            duration=duration,
            buyers=buyers,
            lookup_rate=max(lookup_rate, 1),
            lookup_buyers=lookup_buyers,
            lookup_connections=max(MIN_LOOKUP_CONNECTIONS, math.ceil(lookup_rate * LOOKUP_CYCLE_S)),
            lookups=lookup_rate > 0,
        )
    with events.workdir("gateway", keep) as workdir:
        documents = measured_in_rounds(workdir, rounds, lambda where: measure(plan, where))
        document = judged_on_median(documents)
    saved = publish(document, "gateway", output, as_json, lambda: markdown(document))
    if chart is not None:
        path = bench_chart.chart_path(chart, saved, "gateway", document["machine"]["cores"])
        say(f"drew {bench_chart.draw_gateway(document, path)}")
