"""What the drain tests share: an event with a webhook, claims, and `intake drain` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

from intake_cli.engine import claims
from tests.conftest import INTAKE, ROOT, intake, pool_spec, write_config


def _rows(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


@dataclass
class Event:
    config: Path
    db1: str
    db2: str
    pool_id: str

    def claim(self, count: int, prefix: str = "user") -> list[str]:
        """`count` distinct buyers claim once each; returns the idempotency keys claimed."""
        users = [f"{prefix}-{n}" for n in range(count)]
        report = asyncio.run(claims.burst(self.db1, self.pool_id, users, concurrency=32))
        assert report.outcomes.get("claimed", 0) == count, report.outcomes
        rows = _rows(
            self.db1,
            "select idempotency_key::text from intake.allocations"
            " where pool_id = %s and locked_by like %s",
            (self.pool_id, f"{prefix}-%"),
        )
        return [key for (key,) in rows]

    def stagger_visibility(self, prefix: str, every_ms: int) -> None:
        """Hide the queued intents of buyers `prefix`-n so that one becomes visible
        every `every_ms` from now, in claim order (0: all of them now)."""
        with psycopg.connect(self.db1, autocommit=True) as conn:
            conn.execute(
                """
                update pgmq.q_intents q
                   set vt = clock_timestamp() + make_interval(secs => staggered.n * %s / 1000.0)
                  from (select q.msg_id, row_number() over (order by q.msg_id) - 1 as n
                          from pgmq.q_intents q
                          join intake.allocations a
                            on a.idempotency_key::text = q.message ->> 'idempotency_key'
                         where a.pool_id = %s and a.locked_by like %s) as staggered
                 where q.msg_id = staggered.msg_id
                """,
                (every_ms, self.pool_id, f"{prefix}-%"),
            )

    def queue_depth(self, queue: str = "intents") -> int:
        return _rows(self.db1, "select queue_length from pgmq.metrics(%s)", (queue,))[0][0]

    def tickets(self) -> dict[str, int]:
        """Rows per idempotency key in DB2's ledger."""
        return dict(
            _rows(self.db2, "select idempotency_key::text, count(*) from public.tickets group by 1")
        )

    def units(self) -> dict[str, int]:
        return dict(
            _rows(
                self.db1,
                "select status::text, count(*) from intake.allocations where pool_id = %s"
                " group by 1",
                (self.pool_id,),
            )
        )

    def states(self) -> dict[str, int]:
        return dict(_rows(self.db1, "select state, count(*) from intake.intent_state group by 1"))

    def archived(self, queue: str = "intents") -> int:
        return _rows(self.db1, f"select count(*) from pgmq.a_{queue}")[0][0]

    def set(self, **settings: object) -> None:
        """Change engine_config live, as an operator would."""
        with psycopg.connect(self.db1, autocommit=True) as conn:
            for key, value in settings.items():
                conn.execute(
                    psycopg.sql.SQL("update intake.engine_config set {} = %s").format(
                        psycopg.sql.Identifier(key)
                    ),
                    (value,),
                )


def make_event(
    workdir: Path, db1: str, db2: str, webhook_url: str, inventory: int, **pool: object
) -> Event:
    spec = pool_spec(
        "drop",
        inventory,
        validation_webhook_url=webhook_url,
        retry_base_seconds=0.2,
        retry_max_seconds=2,
        **pool,
    )
    config = write_config(workdir, db1, db2, [spec])
    intake("up", config=config, check=True)
    return Event(config, db1, db2, "drop")


def start_drain(event: Event, *args: str) -> subprocess.Popen[str]:
    # Logs go to a file, not a pipe nobody reads while the worker runs: a full
    # pipe would block the worker's writes and stall it.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by stop()
        mode="w+", prefix="drain-", suffix=".log", dir=event.config.parent, delete=False
    )
    proc = subprocess.Popen(
        [*INTAKE, "-c", str(event.config), "drain", "--log-level", "warning", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=dict(os.environ),
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def workers_seen(db1: str) -> list[tuple[int, bool]]:
    """(pid, stopped) of every worker that registered in DB1."""
    with psycopg.connect(db1) as conn:
        rows = conn.execute("select pid, stopped_at is not null from intake.workers").fetchall()
    return [(pid, stopped) for pid, stopped in rows]


def stop(
    proc: subprocess.Popen[str], timeout: float = 60, db1: str | None = None
) -> tuple[str, str]:
    """SIGTERM, as an operator's Ctrl-C or a supervisor would; the worker must exit 0.

    With `db1`: a worker that never registered there may also have been
    killed by the signal (-15). It came before the worker's handlers were in,
    while the interpreter was still starting: nothing was leased or called
    yet. That happens when other workers empty the queue first; `drain
    --workers` counts such a process as stopped cleanly too."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    err = log.read()
    log.close()
    unstarted = (
        db1 is not None
        and proc.returncode == -signal.SIGTERM
        and proc.pid not in {pid for pid, _ in workers_seen(db1)}
    )
    assert proc.returncode == 0 or unstarted, f"drain exited {proc.returncode}: {err[-3000:]}"
    return out, err


@contextmanager
def draining(event: Event, *args: str, workers: int = 1) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [start_drain(event, *args) for _ in range(workers)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc, db1=event.db1)


def drain_all(
    event: Event, expected_done: int, *args: str, workers: int = 1, timeout: float = 120
) -> None:
    """Run drain workers until the queue is empty and `expected_done` intents are archived."""
    with draining(event, *args, workers=workers):
        wait_for(
            lambda: event.queue_depth() == 0 and event.archived() >= expected_done,
            timeout,
            f"{expected_done} intents drained",
        )


def logged(proc: subprocess.Popen[str], name: str) -> list[dict]:
    """The JSON log lines called `name` that a start_drain process has written so far."""
    lines = Path(proc.log.name).read_text().splitlines()  # type: ignore[attr-defined]
    entries = []
    for line in lines:
        # A line being written as we read may be cut short; the next read has it whole.
        with suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                entries.append(entry)
    return entries


def recorded_states(event: Event) -> dict[str, str]:
    """What DB1's intent_state says of each idempotency key it knows."""
    return dict(_rows(event.db1, "select idempotency_key::text, state from intake.intent_state"))


def with_dsn(event: Event, database: str, dsn: str) -> Event:
    """The same event seen through a config whose `database` (db1 or db2) is at `dsn`."""
    data = yaml.safe_load(event.config.read_text())
    data[database]["dsn"] = dsn
    config = event.config.with_name(f"{event.config.stem}-{database}-moved.yaml")
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    moved = {"db1": event.db1, "db2": event.db2, database: dsn}
    return Event(config, moved["db1"], moved["db2"], event.pool_id)
