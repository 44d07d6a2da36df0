"""What the DB1 crash tests share: an embedded event of their own (a cluster
the test may crash), the two ways to crash it, and a herd of buyers that
rides the crash the way real clients do (reconnect, retry `recovering`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from intake_cli.engine import claims
from intake_cli.platform.embedded import Cluster, EmbeddedClusters, _as, _server_account, pg_bindir
from intake_cli.tools.bench.common.cpu import stat_fields
from tests.acceptance.drain_support import wait_for
from tests.conftest import intake, pool_spec


@dataclass
class CrashEvent:
    config: Path
    state_dir: Path
    pool_id: str

    @property
    def clusters(self) -> dict[str, Cluster]:
        return EmbeddedClusters(self.state_dir).load()

    def listed_ids(self) -> dict[int, str] | None:
        """Unit number → the operator's id, for a pool given by an inventory file."""
        path = self.config.parent / "units.txt"
        if not path.exists():
            return None
        return {n: line for n, line in enumerate(path.read_text().split(), start=1)}

    @property
    def db1(self) -> str:
        return self.clusters["db1"].dsn

    @property
    def db2(self) -> str:
        return self.clusters["db2"].dsn

    def rows(self, dsn: str, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def units(self) -> dict[int, tuple]:
        """DB1's inventory: unit_no → (resource_id, status, locked_by, idempotency_key)."""
        return {
            row[0]: tuple(row[1:])
            for row in self.rows(
                self.db1,
                "select unit_no, resource_id::text, status::text, locked_by,"
                " idempotency_key::text from intake.allocations where pool_id = %s",
                (self.pool_id,),
            )
        }

    def tickets(self) -> list[tuple]:
        """DB2's ledger: (idempotency_key, user_id, unit_no, resource_id) per ticket."""
        return self.rows(
            self.db2,
            "select idempotency_key::text, user_id, unit_no, resource_id::text"
            " from public.tickets where pool_id = %s",
            (self.pool_id,),
        )

    def stop_maintenance(self) -> None:
        """Unschedule the pg_cron maintenance job (it would rebuild a lost pool by
        itself); the next `intake up` schedules it again."""
        with psycopg.connect(self.db1, autocommit=True) as conn:
            if conn.execute("select to_regclass('cron.job') is not null").fetchone()[0]:
                conn.execute(
                    "select cron.unschedule(jobid) from cron.job"
                    " where jobname = 'intake-maintenance'"
                )

    def crash(self, how: str) -> None:
        """Crash DB1 (`immediate`: pg_ctl stop -m immediate; `sigkill`: kill -9 the
        postmaster), then start it again, as a supervisor or a reboot would."""
        cluster = self.clusters["db1"]
        account = _server_account()
        bindir = pg_bindir()
        if how == "immediate":
            subprocess.run(
                [str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", cluster.datadir],
                check=True,
                capture_output=True,
                cwd="/",
                **_as(account),
            )
        else:
            pid = int((Path(cluster.datadir) / "postmaster.pid").read_text().split()[0])
            children = _children(pid)
            os.kill(pid, signal.SIGKILL)
            # Gone, not merely signalled: until then `pg_ctl status` still
            # finds it and nothing would be started.
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            _reap_orphans(children)
        # After a SIGKILL, orphaned backends hold the shared memory a moment
        # longer; the start is retried until they are gone.
        deadline = time.monotonic() + 60
        while True:
            try:
                EmbeddedClusters(self.state_dir).ensure(("db1",))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the process name: state, parent pid, …; [] once the
    process is gone. The bench's reader, so /proc is parsed in one place."""
    return stat_fields(pid) or []


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a postmaster's backends and workers)."""
    return [
        int(entry.name)
        for entry in Path("/proc").glob("[0-9]*")
        if _stat(int(entry.name))[1:2] == [str(pid)]
    ]


def _reap_orphans(children: list[int], grace_s: float = 15.0) -> None:
    """Backends orphaned by a postmaster's SIGKILL exit on their own once they
    notice; one still there after `grace_s` is killed, as a service manager
    stopping the server's control group would, and named on stderr."""
    deadline = time.monotonic() + grace_s
    while any(_running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    for child in children:
        if _running(child):
            with contextlib.suppress(OSError):
                state = _state(child)
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                print(f"orphaned backend {child} ({state}) {cmdline!r} killed", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T, Z…); "" once it is gone."""
    return next(iter(_stat(pid)), "")


def _running(pid: int) -> bool:
    """Still there and not a zombie (a zombie holds no shared memory)."""
    return _state(pid) not in ("", "Z")


def _alive(pid: int) -> bool:
    """Whether the process exists, a zombie not yet reaped included: `pg_ctl
    status` counts one as a running server."""
    return Path(f"/proc/{pid}").exists()


def make_crash_event(
    workdir: Path,
    name: str,
    webhook_url: str,
    inventory: int,
    listed: bool = False,
    embedded: dict[str, object] | None = None,
    **pool: object,
) -> CrashEvent:
    """An embedded event (its own DB1 and DB2, durable commits) made by `intake up`.

    `listed`: the pool's units come from an inventory file of random UUIDs
    (units.txt beside intake.yaml) instead of a count. `embedded`: the
    `embedded:` section (e.g. {"standby": True}).
    """
    directory = workdir / name
    directory.mkdir(mode=0o755)
    if listed:
        ids = "".join(f"{uuid.uuid4()}\n" for _ in range(inventory))
        (directory / "units.txt").write_text(ids)
        pool["inventory_file"] = "units.txt"
    spec = pool_spec(
        "drop",
        inventory,
        validation_webhook_url=webhook_url,
        retry_base_seconds=0.2,
        retry_max_seconds=1,
        visibility_timeout=5,
        batch_size=50,
        **pool,
    )
    if listed:
        del spec["inventory"]
    config = directory / "intake.yaml"
    document: dict[str, object] = {"pools": [spec]}
    if embedded:
        document["embedded"] = embedded
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    # In this process: what `up` prints is not the point here, and its clusters
    # run on their own (pg_ctl) either way.
    intake("up", config=config, check=True)
    return CrashEvent(config, directory / ".intake", "drop")


@contextmanager
def crash_event(
    workdir: Path, name: str, webhook_url: str, inventory: int, **options: Any
) -> Iterator[CrashEvent]:
    """make_crash_event, and its clusters stopped afterwards, whatever happened."""
    event = make_crash_event(workdir, name, webhook_url, inventory, **options)
    try:
        yield event
    finally:
        EmbeddedClusters(event.state_dir).stop()


@dataclass
class Herd:
    """Distinct buyers, each claiming until it gets a final answer."""

    dsn: str
    pool_id: str
    answers: list[tuple[str, str]] = field(default_factory=list)  # (user, outcome) in order
    final: dict[str, claims.Claim] = field(default_factory=dict)
    errors: int = 0
    # Once this many buyers hold a unit, no new buyer starts until `resume`
    # is set: a crash test then never finds the herd over before the crash.
    hold_at: int | None = None
    resume: threading.Event = field(default_factory=threading.Event)
    # Buyers per claim call: 1 is claim_resource, more is claim_resources.
    batch: int = 1
    # time.monotonic() of every answer that gave a buyer a unit.
    held_at: list[float] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        return sum(1 for c in self.final.values() if c.holds_unit)

    def outcomes(self) -> set[str]:
        return {outcome for _, outcome in self.answers}

    async def run(self, users: list[str], concurrency: int, pace_s: float) -> None:
        pending = list(reversed(users))

        async def ask(conn: psycopg.AsyncConnection, todo: list[str]) -> list[claims.Claim]:
            if self.batch == 1:
                cur = await conn.execute(
                    "select (r).* from (select intake.claim_resource(%s, %s) as r) c",
                    (self.pool_id, todo[0]),
                )
                row = await cur.fetchone()
                assert row is not None
                return [claims.Claim(*row)]
            # The gateway's way: one claim_resources call for several buyers.
            return await claims.claim_batch_async(conn, self.pool_id, todo)

        async def buyer() -> None:
            conn: psycopg.AsyncConnection | None = None
            while pending:
                while (
                    self.hold_at is not None
                    and self.claimed >= self.hold_at
                    and not self.resume.is_set()
                ):
                    await asyncio.sleep(0.05)
                if not pending:
                    break
                todo = [pending.pop() for _ in range(min(self.batch, len(pending)))]
                while todo:
                    try:
                        if conn is None or conn.closed:
                            conn = await psycopg.AsyncConnection.connect(
                                self.dsn, autocommit=True, connect_timeout=2
                            )
                        results = await ask(conn, todo)
                    except psycopg.OperationalError:
                        # DB1 is down or restarting; the answers, if any, were lost.
                        self.errors += 1
                        conn = None
                        await asyncio.sleep(0.2)
                        continue
                    again = []
                    for user, result in zip(todo, results, strict=True):
                        self.answers.append((user, result.outcome))
                        if result.holds_unit:
                            self.held_at.append(time.monotonic())
                        if result.outcome == "recovering":
                            again.append(user)
                        else:
                            self.final[user] = result
                    todo = again
                    if todo:
                        await asyncio.sleep(0.1)
                await asyncio.sleep(pace_s)
            if conn is not None:
                await conn.close()

        await asyncio.gather(*(buyer() for _ in range(concurrency)))


def assert_exact_sale(
    event: CrashEvent,
    herd: Herd,
    before: dict[int, tuple],
    units: int,
    *,
    saw_recovering: bool = True,
) -> None:
    """Each of `units` buyers holds the one unit the ledger sold them, each unit
    sold once with the identity it had before the fault, DB1 converged.

    saw_recovering: the fault must have been seen by a buyer as `recovering`.
    """
    # Every one of the N buyers got a unit: no `sold_out` while units remained.
    assert "sold_out" not in herd.outcomes(), Counter(o for _, o in herd.answers)
    if saw_recovering:
        assert "recovering" in herd.outcomes(), "the crash was never seen as `recovering`"
    assert herd.claimed == units
    # Late buyers find the pool sold out.
    late = Herd(event.db1, event.pool_id)
    asyncio.run(late.run([f"late-{n}" for n in range(10)], concurrency=2, pace_s=0))
    assert {c.outcome for c in late.final.values()} == {"sold_out"}

    wait_for(lambda: len(event.tickets()) >= units, 120, "every claim committed", interval=0.5)
    # A worker whose DB1 connection broke between its DB2 commit and the
    # consume keeps the message; the redelivery (after the lease) finds the
    # commit a duplicate and consumes the unit then. DB1 converges; it need
    # not have converged the moment the ledger is full.
    wait_for(
        lambda: Counter(v[1] for v in event.units().values()) == {"consumed": units},
        120,
        "every unit consumed in DB1",
        interval=0.5,
    )
    time.sleep(1)  # anything extra would show up now
    tickets = event.tickets()
    assert len(tickets) == units
    keys, users, unit_nos, resources = zip(*tickets, strict=True)
    assert len(set(keys)) == len(set(users)) == len(set(unit_nos)) == len(set(resources)) == units
    # Each buyer's acknowledged claim is the one committed: same unit, same key.
    by_user = {user: (key, unit_no, res) for key, user, unit_no, res in tickets}
    for user, claim in herd.final.items():
        assert by_user[user] == (str(claim.idempotency_key), claim.unit_no, str(claim.resource_id))
    # Units kept their identity across the crash: the operator's own ids for
    # a listed pool.
    after = event.units()
    assert {n: v[0] for n, v in after.items()} == {n: v[0] for n, v in before.items()}
    listed = event.listed_ids()
    if listed is not None:
        assert {n: v[0] for n, v in after.items()} == listed
        assert {(n, r) for _, _, n, r in tickets} <= set(listed.items())
    assert Counter(v[1] for v in after.values()) == {"consumed": units}
