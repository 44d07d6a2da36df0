"""`intake down --export FILE`: the export is the only copy of the intents it holds.

A FILE the teardown would remove (inside the state directory, however it is
reached), a missing directory, a directory, an existing file or a path that
cannot be created is refused with exit 2 before anything is read or torn
down. Otherwise the export is written, synced and read back before the
clusters go, and survives them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import intake, pool_spec


@pytest.fixture(scope="module")
def event(workdir: Path):
    """An embedded event with three intents queued."""
    home = workdir / "export-event"
    home.mkdir(mode=0o755)
    config = home / "intake.yaml"
    config.write_text(yaml.safe_dump({"pools": [pool_spec("x", 10)]}))
    intake("up", config=config, check=True)
    for user in ("a", "b", "c"):
        intake("claim", "x", user, config=config, check=True)
    (home / "link-to-state").symlink_to(home / ".intake")
    (home / "earlier.jsonl").write_text('{"an": "earlier export"}\n')
    yield config
    intake("down", "--force", config=config)


def _state(config: Path) -> dict[str, object]:
    """What a refused down must not change: the state directory's entries, the
    clusters and DB1's queue."""
    state = config.parent / ".intake"
    status = json.loads(intake("status", "--json", config=config, check=True).stdout)
    return {
        "entries": sorted(os.listdir(state)),
        "clusters": (state / "clusters.json").read_text(),
        "queue": status["queue"]["depth"],
        "available": status["pools"][0]["available"],
    }


BAD_TARGETS = [
    # (FILE relative to the event directory, or absolute; message fragment)
    (".intake/export.jsonl", "inside the state directory"),
    (".intake/db1/export.jsonl", "inside the state directory"),
    (".intake", "inside the state directory"),
    ("link-to-state/export.jsonl", "inside the state directory"),
    ("missing-dir/out.jsonl", "does not exist"),
    ("missing-dir/deeper/out.jsonl", "does not exist"),
    (".", "is a directory"),
    ("earlier.jsonl", "already exists"),
    ("/proc/intake-export.jsonl", "cannot create it"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "fragment"), BAD_TARGETS)
def test_a_bad_export_target_is_refused_before_anything_is_torn_down(event, target, fragment):
    home = event.parent
    path = target if target.startswith("/") else str(home / target)
    before = _state(event)
    earlier = (home / "earlier.jsonl").read_text()

    proc = intake("down", "--export", path, config=event)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "--export" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _state(event) == before
    assert (home / "earlier.jsonl").read_text() == earlier
    if target not in (".", ".intake", "earlier.jsonl"):
        assert not Path(path).exists()


def test_a_relative_missing_directory_is_a_clear_error(event):
    # As an operator types it: relative to where intake runs.
    proc = intake("down", "--export", "no-such-dir-for-intake/out.jsonl", config=event)
    assert proc.returncode == 2
    assert "no-such-dir-for-intake" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_export_is_verified_and_outlives_the_teardown(workdir):
    home = workdir / "export-good"
    home.mkdir(mode=0o755)
    config = home / "intake.yaml"
    config.write_text(yaml.safe_dump({"pools": [pool_spec("y", 10)]}))
    intake("up", config=config, check=True)
    for user in ("u1", "u2"):
        intake("claim", "y", user, config=config, check=True)
    target = home / "out" / "intents.jsonl"
    target.parent.mkdir()

    done = intake("down", "--export", str(target), config=config)
    assert done.returncode == 0, done.stderr
    assert f"exported 2 intents to {target} (verified)" in " ".join(done.stdout.split())
    assert not (home / ".intake").exists()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(r["message"]["user_id"] for r in records) == ["u1", "u2"]
    assert {r["queue"] for r in records} == {"intents"}
    # Buyers' data: readable by the operator alone.
    assert target.stat().st_mode & 0o777 == 0o600
