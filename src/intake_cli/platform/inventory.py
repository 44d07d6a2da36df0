"""A pool's own unit ids, from its `inventory_file`.

Two costs, two places. Every command loads intake.yaml, so config load only
counts the file's lines (`count_ids`, bytes only). `intake up` calls
`read_ids` before it changes anything: every line is checked, and a bad file
fails the command with its problems listed by line, as a bad intake.yaml does.

Accepted files (UTF-8; a byte order mark, CRLF line ends and a missing final
newline are all fine):

- plain text: one id per line, nothing else on the line;
- a name ending in `.csv` (any case): comma-separated, the first row a header
  with a `resource_id` column; other columns are ignored, and a record may not
  run over several lines (one unit per line keeps line numbers and counts
  exact).

An id is a UUID written as 32 hex digits in 8-4-4-4-12 groups, any case; it is
stored as `str(uuid.UUID(id))`, i.e. lower case. Braces, `urn:uuid:`, 32 bare
digits and surrounding spaces are refused rather than guessed at: the id is
the operator's key into their own systems, and it should read the same there
as in DB1.
"""

from __future__ import annotations

import csv
import re
from operator import itemgetter
from pathlib import Path

from intake_cli.platform.errors import ConfigError

COLUMN = "resource_id"
# Enough to show a pattern (a wrong column, a wrong encoding) without
# burying the operator under a million identical lines.
MAX_PROBLEMS = 20
_SHOWN_CHARS = 60

_UUID = re.compile("[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_BOM = "\ufeff"
# One CSV field on one line: quoted (quotes doubled inside) or bare.
_CSV_FIELD = r'"[^"\n]*(?:""[^"\n]*)*"|[^,"\n]*'
# Bytes that are not UTF-8 come back from surrogateescape as these.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def count_ids(path: Path) -> int:
    """The number of data lines (a CSV's header excluded), from newline bytes alone.

    Cheap enough for every config load (about 15 ms for a million lines). It
    counts lines as `read_ids` does, bad ones included, so an inventory taken
    from it is the one `read_ids` checks the file against. Raises OSError.
    """
    newlines = 0
    last = b""
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
    lines = newlines + (1 if last not in (b"", b"\n") else 0)
    return max(lines - 1, 0) if is_csv(path) else lines


def read_ids(path: Path, declared: int | None) -> list[str]:
    """Every id in the file, canonical and in file order: unit n is the n-th.

    `declared` is the pool's inventory; the file must hold exactly that many
    ids (None skips the check). Raises ConfigError naming the file and each
    bad line.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", str(path)) from None
    csv_file = is_csv(path)
    clean = _clean_file_ids(data, csv_file)
    if clean is None:
        ids, problems = _scan(data, csv_file, declared)
    else:
        ids, problems = clean, _count_problems(len(clean), declared, csv_file)
    if problems:
        raise ConfigError(problems, str(path))
    return ids


def _lines(text: str) -> list[str]:
    """The file's lines without their ends; a final newline ends the last line."""
    text = text.removeprefix(_BOM).replace("\r\n", "\n")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _header_column(header_line: str) -> tuple[int | None, list[str]]:
    try:
        names = [name.strip() for name in next(csv.reader([header_line]), [])]
    except csv.Error:
        names = [header_line]
    return (names.index(COLUMN) if COLUMN in names else None), names


def _clean_file_ids(data: bytes, csv_file: bool) -> list[str] | None:
    """The ids when the file has no problem at all, else None.

    The fast path: no Python code per line, only whole-list operations in C
    (under a second for a million ids in plain text). It proves the file
    clean or gives up; finding and wording the problems is `_scan`'s job,
    paid only by a bad or unusual file.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = _lines(text)
    if csv_file:
        if not lines:
            return None
        column, _ = _header_column(lines[0])
        if column is None:
            return None
        rows = lines[1:]
        if '"' in text:
            quoted = _quoted_column(rows, column)
            if quoted is None:
                return None
            values = quoted
        else:
            # No quoting anywhere: a plain split is the CSV reading, and
            # several times faster than the csv module.
            try:
                values = [row.split(",", column + 1)[column] for row in rows]
            except IndexError:
                return None
    else:
        values = lines
    if not values or not all(map(_UUID.fullmatch, values)):
        return None
    # The pattern admits ASCII only, so lower() is exactly uuid.UUID's form.
    ids = list(map(str.lower, values))
    if len(set(ids)) != len(ids):
        return None
    return ids


def _quoted_column(rows: list[str], column: int) -> list[str] | None:
    """Column `column` of every row, or None unless each line is a whole CSV record.

    A regular expression reads quoted CSV about twice as fast as the csv
    module. It admits a line only when the line alone is a well-formed record,
    so no record runs over a line end; anything else is left to `_scan`. The
    id column itself may be quoted but hold no quote or comma (no UUID does).
    """
    pattern = re.compile(
        rf"^(?:(?:{_CSV_FIELD}),){{{column}}}"
        rf'("?)([^,"\n]*)\1'
        rf"(?:,(?:{_CSV_FIELD}))*$",
        re.MULTILINE,
    )
    found = pattern.findall("\n".join(rows))
    if len(found) != len(rows):
        return None
    return list(map(itemgetter(1), found))


def _show(value: str) -> str:
    # repr() escapes control and invisible characters, so a stray NUL or a
    # bidi override in the file cannot garble or disguise the message.
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "…"
    return repr(value)


def _count_problems(found: int, declared: int | None, csv_file: bool) -> list[str]:
    """Where the file and the declared inventory part ways; `found` counts data lines."""
    if declared is None or found == declared:
        return []
    if found > declared:
        first_extra = declared + 1 + (1 if csv_file else 0)
        return [
            f"line {first_extra}: past the declared inventory of {declared:,} "
            f"(the file lists {found:,})"
        ]
    return [f"lists {found:,} ids, fewer than the declared inventory of {declared:,}"]


def _scan(data: bytes, csv_file: bool, declared: int | None) -> tuple[list[str], list[str]]:
    """The ids and every problem, by line, up to MAX_PROBLEMS.

    Python code per line, so slower than `_clean_file_ids`, but thorough; it
    also reads the rare clean file that `_clean_file_ids` declines (a stray
    quote inside another CSV value).
    """
    text = data.decode("utf-8", "surrogateescape")
    # Most bad files are valid UTF-8: look for bad bytes line by line only
    # when the file has some.
    undecodable = _UNDECODABLE.search(text) is not None
    lines = _lines(text)
    header = 1 if csv_file else 0
    if not lines:
        return [], ["no ids: the file is empty"]
    column = 0
    if csv_file:
        if _UNDECODABLE.search(lines[0]):
            return [], [f"line 1: {_undecodable(lines[0])}"]
        found_column, names = _header_column(lines[0])
        if found_column is None:
            shown = ", ".join(_show(name) for name in names[:10]) or "none"
            return [], [f"line 1: the header has no {COLUMN} column (columns: {shown})"]
        if len(lines) == 1:
            return [], ["no ids: the file has its header line only"]
        column = found_column
    ids: list[str] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[header:], start=header + 1):
        if undecodable and _UNDECODABLE.search(line):
            reason: str | None = _undecodable(line)
        else:
            value, reason = _line_value(line, csv_file, column)
            if value is not None:
                canonical = value.lower()
                first = seen.setdefault(canonical, number)
                if first == number:
                    ids.append(canonical)
                else:
                    reason = f"repeats line {first} ({canonical})"
        if reason is not None:
            problems.append(f"line {number}: {reason}")
            if len(problems) == MAX_PROBLEMS and number < len(lines):
                problems.append(f"stopped after {MAX_PROBLEMS} problems: fix these and run again")
                return ids, problems
    # Bad lines count as lines: a blank line is reported once, as blank, and
    # not again as a unit missing from the inventory.
    return ids, problems + _count_problems(len(lines) - header, declared, csv_file)


def _line_value(line: str, csv_file: bool, column: int) -> tuple[str | None, str | None]:
    """(the line's id as written, None) or (None, what is wrong with the line)."""
    value = line
    if csv_file:
        if '"' in line:
            try:
                # Strict, and one line at a time: a quote left open is
                # reported here instead of swallowing the lines after it.
                record = next(csv.reader([line], strict=True))
            except csv.Error as exc:
                return None, f"not a CSV row of its own ({exc}); a value may not run over lines"
        else:
            record = line.split(",")
        if not line.strip():
            return None, "blank line"
        if len(record) <= column:
            return None, f"no {COLUMN} value (the row has {len(record)} columns)"
        value = record[column]
    if _UUID.fullmatch(value):
        return value, None
    if not line.strip():
        return None, "blank line"
    return None, f"not a UUID in 8-4-4-4-12 hex form: {_show(value)}"


def _undecodable(line: str) -> str:
    match = _UNDECODABLE.search(line)
    assert match is not None
    byte = ord(match.group()) - 0xDC00
    return f"not UTF-8 text (byte 0x{byte:02x} at column {match.start() + 1})"
