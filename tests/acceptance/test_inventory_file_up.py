"""`intake up` with a pool listed from an inventory file: the operator's ids
become the units' resource ids, bad files change nothing, listed ids never
change."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.conftest import intake, pool_spec, snapshot, write_config


def listed_pool(directory: Path, ids: list[str], name: str = "units.txt", **extra: object) -> dict:
    path = directory / name
    path.write_text("".join(f"{i}\n" for i in ids))
    spec = pool_spec("listed", **extra)
    del spec["inventory"]
    spec["inventory_file"] = str(path)
    return spec


def resource_ids(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(
            conn.execute(
                "select unit_no, resource_id::text from intake.allocations where pool_id = 'listed'"
            ).fetchall()
        )


def test_listed_units_carry_the_operators_ids_and_grow_by_appending(workdir, empty_db_dsn, db2_dsn):
    ids = [str(uuid.uuid4()) for _ in range(30)]
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [listed_pool(workdir, ids)])
    report = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert report["seeded"][0]["added"] == 30
    assert resource_ids(empty_db_dsn) == dict(enumerate(ids, start=1))
    claimed = json.loads(intake("claim", "listed", "ann", "--json", config=cfg).stdout)
    assert claimed["resource_id"] == ids[0]

    more = ids + [str(uuid.uuid4()) for _ in range(5)]
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [listed_pool(workdir, more)])
    report = json.loads(intake("up", "--json", config=cfg, check=True).stdout)
    assert report["seeded"][0]["added"] == 5
    assert resource_ids(empty_db_dsn) == dict(enumerate(more, start=1))

    # An id already given to a unit never changes.
    edited = [*more]
    edited[3] = str(uuid.uuid4())
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [listed_pool(workdir, edited)])
    before = snapshot(empty_db_dsn)
    refused = intake("up", config=cfg)
    assert refused.returncode == 2, refused
    assert "units.txt: units already listed keep their ids (line 4:" in refused.stderr
    assert snapshot(empty_db_dsn) == before


GOOD = [str(uuid.uuid4()) for _ in range(4)]


@pytest.mark.parametrize(
    ("content", "inventory", "fragment"),
    [
        ("", None, "no ids"),
        (f"{GOOD[0]}\n\n{GOOD[1]}\n", None, "line 2: blank line"),
        (f"{GOOD[0]}\n{GOOD[1]}\n{GOOD[0]}\n", None, "line 3: repeats line 1"),
        (f"{GOOD[0]}\nseat-A12\n", None, "line 2: not a UUID"),
        ("".join(f"{g}\n" for g in GOOD), 3, "line 4 is past the declared inventory"),
    ],
    ids=["empty", "blank-line", "duplicate", "not-a-uuid", "more-than-inventory"],
)
def test_a_bad_inventory_file_is_refused_and_changes_nothing(
    workdir, empty_db_dsn, db2_dsn, content, inventory, fragment
):
    good = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("other", 5)])
    intake("up", config=good, check=True)
    before = snapshot(empty_db_dsn)
    path = workdir / f"bad-{uuid.uuid4().hex[:6]}.txt"
    path.write_bytes(content.encode())
    spec = pool_spec("listed", inventory or 1)
    spec["inventory_file"] = str(path)
    if inventory is None:
        del spec["inventory"]
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [pool_spec("other", 5), spec])
    proc = intake("up", config=cfg)
    assert proc.returncode == 2, proc
    assert str(path) in proc.stderr and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(empty_db_dsn) == before


def test_a_missing_inventory_file_is_refused(workdir, empty_db_dsn, db2_dsn):
    spec = pool_spec("listed")
    del spec["inventory"]
    spec["inventory_file"] = str(workdir / "nowhere.txt")
    cfg = write_config(workdir, empty_db_dsn, db2_dsn, [spec])
    proc = intake("up", config=cfg)
    assert proc.returncode == 2 and "nowhere.txt" in proc.stderr, proc
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("select to_regnamespace('intake')").fetchone()[0] is None
