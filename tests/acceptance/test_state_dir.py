"""The state directory is intake's alone, and only what intake made is removed.

A directory holding others' files (and no marker of intake's) is refused
with nothing touched; `down` removes intake's entries and leaves anything
else, the directory included while it holds something; two `intake up` at
once on a fresh state directory are serialised, not both half-done.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import INTAKE, ROOT, intake, pool_spec

FOREIGN = "refused because of the operator's files"


def tree(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under directory: mode and, for files, contents."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(directory))] = (
            info.st_mode,
            path.read_bytes() if path.is_file() else None,
        )
    return found


def write_config(directory: Path, **top: object) -> Path:
    config = directory / "intake.yaml"
    config.write_text(yaml.safe_dump({**top, "pools": [pool_spec("sd", 10)]}))
    return config


def test_a_state_dir_holding_the_operators_files_is_refused_and_left_alone(workdir: Path):
    event = workdir / "state-dot"
    event.mkdir(mode=0o755)
    config = write_config(event, state_dir=".")
    (event / "notes.txt").write_text("the operator's, not intake's\n")
    before = tree(event)

    refused = intake("up", config=config)
    assert refused.returncode == 2, refused.stderr
    assert "holds files intake did not create (intake.yaml, notes.txt)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert tree(event) == before

    # Nothing of intake's there: down has nothing to remove, and removes nothing.
    for args in (("down",), ("down", "--force")):
        proc = intake(*args, config=config)
        assert proc.returncode == 0, proc.stderr
        assert tree(event) == before

    # A file where the state directory should be is refused the same way.
    elsewhere = workdir / "state-file"
    elsewhere.mkdir(mode=0o755)
    config = write_config(elsewhere, state_dir="taken")
    (elsewhere / "taken").write_text("a file\n")
    before = tree(elsewhere)
    proc = intake("up", config=config)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr, proc.stderr
    assert tree(elsewhere) == before


@pytest.mark.slow
def test_down_removes_only_what_intake_made(workdir: Path):
    event = workdir / "state-own"
    event.mkdir(mode=0o755)
    config = write_config(event, state_dir="state")
    intake("up", config=config, check=True)
    state = event / "state"
    assert (state / ".intake-state").is_file()
    # The operator puts a file of theirs in intake's directory while it runs.
    (state / "notes.txt").write_text("mine\n")
    (state / "keep").mkdir()
    (state / "keep" / "inner.txt").write_text("also mine\n")
    outside = tree(event / "state" / "keep")

    done = intake("down", "--force", "--json", config=config)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stopped_embedded"] is True
    assert report["left_in_state_dir"] == ["keep", "notes.txt"]
    assert sorted(os.listdir(state)) == ["keep", "notes.txt"]
    assert (state / "notes.txt").read_text() == "mine\n"
    assert tree(state / "keep") == outside
    assert (event / "intake.yaml").exists()

    # With intake's marker gone, the directory is the operator's: refused.
    again = intake("up", config=config)
    assert again.returncode == 2 and "(keep, notes.txt)" in again.stderr, again.stderr

    # Emptied, it is a fresh state directory again; a down with nothing
    # foreign left removes the directory itself.
    (state / "notes.txt").unlink()
    (state / "keep" / "inner.txt").unlink()
    (state / "keep").rmdir()
    intake("up", config=config, check=True)
    human = intake("down", "--force", config=config, check=True)
    assert "left" not in human.stdout
    assert not state.exists()
    assert sorted(os.listdir(event)) == ["intake.yaml"]


def test_an_up_that_fails_early_leaves_no_state_dir(workdir: Path):
    event = workdir / "state-early"
    event.mkdir(mode=0o755)
    config = event / "intake.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "db1": {"dsn": "host=127.0.0.1 port=9 user=intake dbname=intake"},
                "pools": [pool_spec("sd", 10)],
            }
        )
    )
    proc = intake("up", config=config)
    assert proc.returncode == 3, proc.stderr
    assert sorted(os.listdir(event)) == ["intake.yaml"]


def _postmasters_under(directory: Path) -> list[int]:
    """Running servers (`postgres -D DATADIR`, as pg_ctl starts them) with their
    data directory under directory; backends rename themselves and do not count."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith(b"/postgres") and b"-D" in argv:
            datadir = Path(os.fsdecode(argv[argv.index(b"-D") + 1]))
            if directory in datadir.parents:
                found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_two_ups_at_once_on_a_fresh_state_dir_make_one_event(workdir: Path):
    event = workdir / "state-race"
    event.mkdir(mode=0o755)
    config = write_config(event)
    argv = [*INTAKE, "-c", str(config), "up", "--json"]
    procs = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    state = event / ".intake"
    try:
        for code, _out, err in results:
            assert code == 0, err
            assert "Traceback" not in err
        reports = [json.loads(out) for _, out, _ in results]
        # One of them made the event; the other found it made.
        created = sorted(r["seeded"][0]["added"] for r in reports)
        assert created == [0, 10], reports
        clusters = json.loads((state / "clusters.json").read_text())
        assert set(clusters) == {"db1", "db2"}
        assert sorted(os.listdir(state)) == [
            ".intake-state",
            "clusters.json",
            "db1",
            "db1.log",
            "db2",
            "db2.log",
            "pgpass",
        ]
        assert len(_postmasters_under(state)) == 2
        status = json.loads(intake("status", "--json", config=config, check=True).stdout)
        assert status["pools"][0]["inventory"] == 10
        assert status["pools"][0]["available"] == 10
    finally:
        intake("down", "--force", config=config)
    assert not state.exists()


def test_the_demo_leaves_an_intake_yaml_it_did_not_write_alone(workdir: Path):
    directory = workdir / "not-a-demo"
    directory.mkdir(mode=0o755)
    config = write_config(directory)
    before = tree(directory)
    proc = intake("demo", "--dir", str(directory), "--no-watch", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "holds an intake.yaml the demo did not write" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree(directory) == before
    assert config.exists()
