"""The drain's phase clock (engine/drain/phases.py) and the bench's steady state, on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from intake_cli.engine.drain import phases
from intake_cli.tools.bench.cputime import CpuSample
from intake_cli.tools.bench.drain import Tick, phase_report, sized, steady_state

_CHILD = """
from intake_cli.engine.drain.phases import PhaseClock
clock = PhaseClock.from_environment()
if clock is not None:
    clock.add("read", 0.25)
    clock.add("read", 0.25)
    with clock.clock("finish"):
        pass
"""


def _child(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True)


def test_off_unless_the_environment_names_a_directory(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != phases.ENV}
    _child(env)
    assert list(tmp_path.iterdir()) == []
    assert phases.PhaseClock.from_environment({}) is None
    # The drain's default records nothing and hands out one shared no-op.
    assert phases.NO_PHASES.clock("x") is phases.NO_PHASES.clock("y")


def test_on_each_process_writes_its_totals_on_exit(tmp_path: Path):
    _child({**os.environ, phases.ENV: str(tmp_path)})
    [written] = list(tmp_path.glob("*.json"))
    document = json.loads(written.read_text())
    assert document["phases"]["read"] == {"seconds": 0.5, "count": 2}
    assert document["phases"]["finish"]["count"] == 1
    report = phase_report(tmp_path, concurrency=1)
    assert (report["workers"], report["batches"]) == (1, 2)
    assert report["ms_per_batch"]["read"] == 250.0


def _tick(at: float, done: int) -> Tick:
    cpu = CpuSample(busy=at, total=2 * at)
    return Tick(at, done, cpu, {"workers": at / 2, "webhook": 0.0, "db1": 0.0, "db2": 0.0})


def test_steady_state_leaves_out_the_start_and_the_tail():
    # Slow start (100/s for 2 s), 1,000/s in the middle, a slow tail.
    timeline = [_tick(0, 0), _tick(2, 200), *(_tick(2 + n, 200 + 1000 * n) for n in range(1, 8))]
    timeline.append(_tick(20, 8000))
    steady = steady_state(timeline, 8000)
    assert steady is not None
    assert round(steady.per_sec) == 1000
    assert steady.machine_busy == 0.5
    assert steady.part_ms_per_intent["workers"] == 0.5


def test_the_run_is_sized_for_every_slot():
    assert sized(1000, processes=8, concurrency=4, batch_size=500, per_slot=10) == 160_000
    assert sized(200_000, processes=1, concurrency=4, batch_size=500, per_slot=10) == 200_000
