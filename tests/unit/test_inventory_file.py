"""A pool's inventory_file: every bad file refused by line, every good one read in order."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from intake_cli.platform import inventory
from intake_cli.platform.errors import ConfigError

IDS = [str(uuid.UUID(int=n * 0x1_0001_0001)) for n in range(1, 6)]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        # newline="" so the test, not the platform, decides the line ends.
        with path.open("w", encoding="utf-8", newline="") as stream:
            stream.write(content)
    else:
        path.write_bytes(content)
    return path


def refused(path: Path, declared: int | None = None) -> list[str]:
    """The problems read_ids reports; the error names the file and exits 2."""
    with pytest.raises(ConfigError) as caught:
        inventory.read_ids(path, declared)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{path}: invalid configuration")
    return caught.value.problems


# Good files.


def test_plain_file_gives_ids_in_order(tmp_path):
    path = write(tmp_path, "units.txt", "\n".join(IDS) + "\n")
    assert inventory.read_ids(path, 5) == IDS
    assert inventory.count_ids(path) == 5


def test_crlf_uppercase_and_no_final_newline_are_accepted(tmp_path):
    path = write(tmp_path, "units.txt", "\r\n".join(i.upper() for i in IDS))
    assert inventory.read_ids(path, None) == IDS
    assert inventory.count_ids(path) == 5


def test_ids_are_canonical_like_uuid(tmp_path):
    mixed = "0F1E2D3C-4b5a-6978-8796-A5B4c3d2e1f0"
    path = write(tmp_path, "units.txt", f"\ufeff{mixed}\n")  # a BOM is ignored
    assert inventory.read_ids(path, 1) == [str(uuid.UUID(mixed))]


def test_csv_reads_the_resource_id_column_only(tmp_path):
    rows = "".join(f"A{n},{i.upper()},note {n}\r\n" for n, i in enumerate(IDS))
    path = write(tmp_path, "units.CSV", "seat, resource_id ,note\r\n" + rows)
    assert inventory.read_ids(path, 5) == IDS
    assert inventory.count_ids(path) == 5


def test_csv_with_quoted_values(tmp_path):
    rows = "".join(f'"A, {n}","{i}","say ""hi"""\n' for n, i in enumerate(IDS))
    path = write(tmp_path, "units.csv", '"seat","resource_id","note"\n' + rows)
    assert inventory.read_ids(path, 5) == IDS


def test_csv_quoted_id_holding_a_comma_is_not_a_uuid(tmp_path):
    path = write(tmp_path, "units.csv", f'resource_id,seat\n"{IDS[0]}",A1\n"{IDS[1]},x",A2\n')
    assert refused(path) == [f"line 3: not a UUID in 8-4-4-4-12 hex form: '{IDS[1]},x'"]


def test_csv_with_a_stray_quote_in_another_column_still_reads(tmp_path):
    # Valid CSV the fast path declines: the thorough path must return the ids.
    path = write(tmp_path, "units.csv", f'resource_id,seat\n{IDS[0]},row 5"\n{IDS[1]},b\n')
    assert inventory.read_ids(path, 2) == IDS[:2]


@pytest.mark.parametrize(
    "content, lines",
    [
        ("", 0),
        ("a", 1),
        ("a\n", 1),
        ("a\nb", 2),
        ("a\r\nb\r\n", 2),
        ("\n\n", 2),
    ],
)
def test_count_ids_counts_lines_as_read_ids_does(tmp_path, content, lines):
    assert inventory.count_ids(write(tmp_path, "units.txt", content)) == lines
    assert inventory.count_ids(write(tmp_path, "units.csv", "resource_id\n" + content)) == lines


@pytest.mark.serial
def test_a_million_ids_are_read_quickly(tmp_path):
    # A loose bound that catches per-line work gone quadratic, not a benchmark
    # (which is in the report: about 0.7 s here on an idle machine).
    ids = [f"{n:08x}-0000-4000-8000-{n:012x}" for n in range(1_000_000)]
    path = write(tmp_path, "units.txt", "\n".join(ids) + "\n")
    started = time.perf_counter()
    assert inventory.read_ids(path, inventory.count_ids(path)) == ids
    assert time.perf_counter() - started < 6


# Bad files: each problem names the line.


def test_empty_files(tmp_path):
    assert refused(write(tmp_path, "units.txt", "")) == ["no ids: the file is empty"]
    assert refused(write(tmp_path, "units.csv", "resource_id\r\n")) == [
        "no ids: the file has its header line only"
    ]


def test_blank_lines(tmp_path):
    path = write(tmp_path, "units.txt", f"{IDS[0]}\n\n{IDS[1]}\n  \t\n")
    # Counted as lines: blank, not also "fewer than the inventory".
    assert refused(path, 4) == ["line 2: blank line", "line 4: blank line"]


@pytest.mark.parametrize(
    "written",
    [
        "{" + IDS[0] + "}",
        "urn:uuid:" + IDS[0],
        IDS[0].replace("-", ""),
        " " + IDS[0],
        IDS[0] + " ",
        IDS[0][:-1] + "g",
        "seat-17",
    ],
)
def test_ids_not_in_8_4_4_4_12_form(tmp_path, written):
    path = write(tmp_path, "units.txt", f"{IDS[1]}\n{written}\n")
    assert refused(path) == [f"line 2: not a UUID in 8-4-4-4-12 hex form: {written!r}"]


def test_bad_values_are_escaped_and_truncated(tmp_path):
    path = write(tmp_path, "units.txt", "\x1b[31mred\x00\u202eevil" + "x" * 100 + "\n")
    [problem] = refused(path)
    assert problem.startswith(r"line 1: not a UUID in 8-4-4-4-12 hex form: '\x1b[31mred\x00\u202e")
    assert problem.endswith("…") and len(problem) < 140
    assert "\x1b" not in problem and "\x00" not in problem and "\u202e" not in problem


def test_duplicates_name_both_lines(tmp_path):
    path = write(tmp_path, "units.txt", f"{IDS[0]}\n{IDS[1]}\n{IDS[0].upper()}\n")
    assert refused(path) == [f"line 3: repeats line 1 ({IDS[0]})"]


def test_more_ids_than_the_inventory(tmp_path):
    plain = write(tmp_path, "units.txt", "\n".join(IDS))
    assert refused(plain, 3) == ["line 4: past the declared inventory of 3 (the file lists 5)"]
    listed = write(tmp_path, "units.csv", "resource_id\n" + "\n".join(IDS))
    assert refused(listed, 3) == ["line 5: past the declared inventory of 3 (the file lists 5)"]


def test_fewer_ids_than_the_inventory(tmp_path):
    path = write(tmp_path, "units.txt", "\n".join(IDS))
    assert refused(path, 7) == ["lists 5 ids, fewer than the declared inventory of 7"]


def test_csv_without_a_resource_id_column(tmp_path):
    path = write(tmp_path, "units.csv", f"id,seat\n{IDS[0]},A1\n")
    assert refused(path) == ["line 1: the header has no resource_id column (columns: 'id', 'seat')"]


def test_csv_rows_that_are_short_or_run_over_lines(tmp_path):
    path = write(
        tmp_path,
        "units.csv",
        f'seat,resource_id\nA1\n"B\n1",{IDS[0]}\nC1,{IDS[1]}\n',
    )
    assert refused(path) == [
        "line 2: no resource_id value (the row has 1 columns)",
        "line 3: not a CSV row of its own (unexpected end of data); a value may not run over lines",
    ]


def test_non_utf8_lines(tmp_path):
    path = write(tmp_path, "units.txt", f"{IDS[0]}\n".encode() + b"caf\xe9\n" + IDS[1].encode())
    assert refused(path) == ["line 2: not UTF-8 text (byte 0xe9 at column 4)"]
    listed = write(tmp_path, "units.csv", b"resource_id,n\xff\n")
    assert refused(listed) == ["line 1: not UTF-8 text (byte 0xff at column 14)"]


def test_at_most_twenty_problems(tmp_path):
    path = write(tmp_path, "units.txt", "".join(f"bad {n}\n" for n in range(1000)))
    problems = refused(path, 1000)
    assert len(problems) == 21
    assert problems[19] == "line 20: not a UUID in 8-4-4-4-12 hex form: 'bad 19'"
    assert problems[20] == "stopped after 20 problems: fix these and run again"


def test_a_file_gone_since_config_load(tmp_path):
    path = tmp_path / "gone.txt"
    assert refused(path) == ["cannot read the file: No such file or directory"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("units.txt", "\n".join(IDS)),
        ("units.txt", "\ufeff" + "\r\n".join(i.upper() for i in IDS) + "\r\n"),
        ("units.csv", "seat,resource_id\n" + "".join(f"A{n},{i}\n" for n, i in enumerate(IDS))),
        ("units.csv", 'resource_id,"x"\n' + "".join(f'"{i}","a,""b"""\n' for i in IDS)),
    ],
)
def test_fast_and_thorough_readings_agree(tmp_path, name, content):
    # Two readers by design (one for speed, one for messages): on a clean file
    # they must return the same ids.
    data = write(tmp_path, name, content).read_bytes()
    csv_file = name.endswith(".csv")
    assert inventory._clean_file_ids(data, csv_file) == IDS
    assert inventory._scan(data, csv_file, 5) == (IDS, [])
