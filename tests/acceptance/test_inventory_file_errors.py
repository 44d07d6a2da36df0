"""The CLI refuses a config whose inventory_file it cannot use, before any database.

There is no `intake config check`: every command loads and validates the
config first. `intake status` is used because, with a valid config, it would
only try to reach DB1 (port 9, refused at once) and change nothing.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import intake, pool_spec

UNREACHABLE = "host=127.0.0.1 port=9 user=intake dbname=intake connect_timeout=2"


def write(directory: Path, pool: dict) -> Path:
    path = directory / "intake.yaml"
    path.write_text(
        yaml.safe_dump(
            {"db1": {"dsn": UNREACHABLE}, "db2": {"dsn": UNREACHABLE}, "pools": [pool]},
            sort_keys=False,
        )
    )
    return path


def test_missing_inventory_file_exits_2_naming_the_file(tmp_path):
    pool = pool_spec("listed", 10)
    del pool["inventory"]
    pool["inventory_file"] = "lists/units-missing.txt"
    cfg = write(tmp_path, pool)

    proc = intake("status", config=cfg)

    assert proc.returncode == 2, proc.stderr
    assert "invalid configuration" in proc.stderr
    assert (
        f"pools[0].inventory_file: file not found: {tmp_path / 'lists' / 'units-missing.txt'}"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr + proc.stdout


def test_inventory_disagreeing_with_the_file_exits_2(tmp_path):
    (tmp_path / "units.txt").write_text("0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0\n")
    cfg = write(tmp_path, pool_spec("listed", 10, inventory_file="units.txt"))

    proc = intake("status", config=cfg)

    assert proc.returncode == 2, proc.stderr
    assert f"pools[0].inventory: 10 does not match {tmp_path / 'units.txt'}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
