"""DB1 and DB2 as migration files for a Supabase project (`intake render`).

A Supabase user keeps their schema in `supabase/migrations` and applies it
with `supabase db push`; intake's SQL goes there as ordered files, each one
safe to apply again. DB1's set is the intake schema, its migrations (each
guarded by its record in intake.schema_version, the ledger `intake up`
keeps too), its functions and grants, and its pg_cron jobs; DB2's set is the
example ledger. What is data stays with `intake up` run against the project:
the queues, the pools and their inventory (docs/supabase.md).

A render records what it wrote, with each file's sha256, in a manifest
beside db1/ and db2/; `--force` replaces or removes those files and nothing
else, so the user's own migrations kept next to intake's are never touched.

Nothing here creates Supabase's roles or auth.uid(): the files refuse a
database without them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import sql

from intake_cli.engine import schema
from intake_cli.platform.config import QUEUE_NAME_PATTERN
from intake_cli.platform.errors import IntakeError, UsageError
from intake_cli.platform.sqlfiles import render

TARGETS = ("supabase",)
STAMP_FORMAT = "%Y%m%d%H%M%S"
GROUPS = ("db1", "db2")
# The record of what a render wrote, in --out beside db1/ and db2/.
MANIFEST = ".intake-render.json"
MANIFEST_FORMAT = 1
_MANIFEST_NOTE = (
    "Written by `intake render`. `--force` replaces or removes only the files listed here, "
    "each only while its sha256 is still the one below; any other file is left alone."
)
# Every name intake gives a file: a manifest listing anything else was not written by it.
_OUR_NAME = re.compile(r"db[12]/[0-9]{14}_intake_[a-z0-9_]+\.sql")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Far above any file intake writes; a larger one is not intake's and is not read whole.
_MAX_READ = 16 * 1024 * 1024
_TEMP_PREFIX = ".intake-render-"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The argument is fine and the machine is not: not a usage error.
_MACHINE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})
# Bodies of the example's commit RPC that earlier intakes installed: the
# DB2 file replaces them in place; any other public.finalize_transaction is
# somebody's ledger and makes the file stop.
_EARLIER_EXAMPLES = ("ef0839e96f23057bd953c767d6c23bd2", "c64e9d9c531adc433c33a8a16e4bac63")


@dataclass(frozen=True)
class MigrationFile:
    """One rendered file: which set it belongs to (db1 | db2), its name, its SQL."""

    group: str
    name: str
    sql: str


def parse_stamp(text: str) -> datetime:
    try:
        return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(
            f"--timestamp {text!r}: expected YYYYMMDDHHMMSS (UTC), as Supabase names migrations"
        ) from None


def _queue_table(queue_name: str, prefix: str = "q") -> str:
    return sql.Identifier("pgmq", f"{prefix}_{queue_name}").as_string(None)


def _embedded(text: str, tag: str) -> str:
    """`text` for a $tag$ … $tag$ string; refused if it holds the tag itself."""
    if f"${tag}$" in text:
        raise RuntimeError(f"SQL to embed contains its own quote ${tag}$")
    return text


def _db1(queue_name: str, dlq_name: str, drain_tick: bool) -> list[tuple[str, str]]:
    files = [
        ("pgmq", render("supabase/db1_pgmq.sql.j2")),
        ("schema", render("supabase/db1_schema.sql.j2", bootstrap=render("db1/bootstrap.sql"))),
    ]
    for migration in schema.migrations():
        body = _embedded(render(migration.template), "intake_migration_body")
        files.append(
            (
                f"{migration.version:04d}_{migration.name}",
                render(
                    "supabase/db1_migration.sql.j2",
                    version=str(migration.version),
                    name=migration.name,
                    body=body,
                ),
            )
        )
    queue, dlq = _queue_table(queue_name), _queue_table(dlq_name)
    functions = render(
        "supabase/db1_functions.sql.j2",
        queue_name=queue_name,
        dlq_name=dlq_name,
        telemetry=render("db1/telemetry.sql.j2", queue_table=queue, dlq_table=dlq),
        recovery=render(
            "db1/recovery.sql.j2",
            queue_table=queue,
            archive_table=_queue_table(queue_name, "a"),
            dlq_table=dlq,
            dlq_archive_table=_queue_table(dlq_name, "a"),
        ),
        functions=render("db1/functions.sql.j2", queue_table=queue),
    )
    cron = render(
        "supabase/db1_cron.sql.j2",
        cron_seconds=_embedded(render("db1/cron.sql.j2", seconds_schedule=True), "seconds"),
        cron_minutes=_embedded(render("db1/cron.sql.j2", seconds_schedule=False), "minutes"),
        minute_loop=_embedded(render("db1/minute_loop.sql"), "minute_loop"),
    )
    files += [("functions", functions), ("cron", cron)]
    if drain_tick:
        files.append(("drain_tick", render("supabase/db1_drain_tick.sql")))
    return files


def _db2() -> list[tuple[str, str]]:
    current = render("db2/finalize_transaction.sql").split("$finalize$")[1]
    known = (hashlib.md5(current.encode()).hexdigest(), *_EARLIER_EXAMPLES)
    ledger = render(
        "supabase/db2_example_ledger.sql.j2",
        example_ledger=_embedded(render("db2/example_ledger.sql"), "example_body"),
        example_upgrade=render("db2/example_upgrade.sql"),
        realtime=render("db2/realtime.sql"),
        known_bodies=", ".join(f"'{md5}'" for md5 in known),
    )
    return [("example_ledger", ledger)]


def supabase_migrations(
    stamp: datetime, queue_name: str = "intents", *, drain_tick: bool = False
) -> list[MigrationFile]:
    """Every file, in the order they apply: DB1's, then DB2's, one second apart."""
    if not QUEUE_NAME_PATTERN.fullmatch(queue_name):
        raise UsageError(
            f"--queue-name {queue_name!r}: expected intake.yaml's queue_name "
            "(a-z, 0-9 and _, starting with a letter, at most 40 characters)"
        )
    ordered = [
        ("db1", what, text) for what, text in _db1(queue_name, f"{queue_name}_dlq", drain_tick)
    ]
    ordered += [("db2", what, text) for what, text in _db2()]
    return [
        MigrationFile(
            group,
            f"{(stamp + timedelta(seconds=n)).strftime(STAMP_FORMAT)}_intake_{what}.sql",
            text,
        )
        for n, (group, what, text) in enumerate(ordered)
    ]


def out_directory(text: str) -> Path:
    """`--out` as a Path, refused where it cannot name a directory.

    Checked on the text because Path("") is ".": an empty --out (an unset
    shell variable) would otherwise write into whatever directory this is.
    """
    if not text.strip():
        blank = "empty" if not text else "only whitespace"
        raise UsageError(f"--out {text!r}: {blank}; name a directory (. for the current one)")
    if "\0" in text:
        raise UsageError(f"--out {text!r}: contains a NUL character, which no path can hold")
    return Path(text)


def write(files: list[MigrationFile], out: Path, *, force: bool = False) -> list[Path]:
    """Write the files under out/db1 and out/db2, and the manifest that names them.

    Everything is checked before the first byte is written, and the files go
    to temporary names that replace nothing until every one is written, so a
    refusal or a full disk leaves `out` as it was. `force` replaces or removes
    only what an earlier render's manifest lists, each file only while it is
    byte for byte what intake wrote: a file intake did not write, or one
    edited since, is never touched and stops the render.
    """
    wanted = {f"{f.group}/{f.name}": f.sql.encode("utf-8") for f in files}
    _check_out(out)
    with _Survey(out, wanted) as survey:
        stale = _decide(survey, wanted, force=force)
        _commit(survey, wanted, stale)
    return [out / rel for rel in wanted]


class _Survey:
    """What `out` holds, read before anything is written, through directory
    descriptors opened without following links: nothing a link points to is
    read, replaced or removed, whatever is swapped in while the render runs."""

    def __init__(self, out: Path, wanted: dict[str, bytes]) -> None:
        self.out = out
        self.wanted = wanted
        self.out_fd: int | None = None
        self.group_fds: dict[str, int] = {}
        self.manifest: dict[str, str] | None = None
        self.present: list[str] = []  # manifest entries still as intake wrote them
        self.changed: list[str] = []  # manifest entries edited or replaced since
        self.named_like_ours: list[str] = []  # db1/, db2/ names intake would use
        self.foreign: list[str] = []  # files to write where something not intake's is

    def __enter__(self) -> _Survey:
        try:
            self._read()
        except OSError as exc:
            self.close()
            raise _refusal(self.out, exc) from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self.group_fds.values(), self.out_fd]:
            if fd is not None:
                os.close(fd)
        self.out_fd, self.group_fds = None, {}

    def _read(self) -> None:
        if not os.path.lexists(self.out):
            return
        self.out_fd = os.open(self.out, _DIRECTORY)
        for group in GROUPS:
            try:
                st = os.stat(group, dir_fd=self.out_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UsageError(
                    f"--out {self.out}: {group} is a symbolic link; intake writes through no link"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"--out {self.out}: {group} exists and is not a directory")
            self.group_fds[group] = os.open(group, _DIRECTORY, dir_fd=self.out_fd)
            self.named_like_ours += sorted(
                f"{group}/{name}"
                for name in os.listdir(self.group_fds[group])
                if _OUR_NAME.fullmatch(f"{group}/{name}")
            )
        self.manifest = self._manifest()
        for rel, digest in (self.manifest or {}).items():
            found = self.digest(rel)
            if found == digest:
                self.present.append(rel)
            elif found is not None:
                self.changed.append(rel)
        self.foreign = [
            rel for rel in self.wanted if rel not in self.present and self.digest(rel) is not None
        ]

    def _manifest(self) -> dict[str, str] | None:
        assert self.out_fd is not None
        try:
            data = _read_plain(self.out_fd, MANIFEST)
        except FileNotFoundError:
            return None
        except _NotPlain as exc:
            raise self._damaged(str(exc)) from None
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested past Python's stack
            raise self._damaged("is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
            raise self._damaged(f"is not format {MANIFEST_FORMAT} of intake's manifest")
        listed = document.get("files")
        if not isinstance(listed, dict):
            raise self._damaged(f"is not format {MANIFEST_FORMAT} of intake's manifest")
        for rel, digest in listed.items():
            if not _OUR_NAME.fullmatch(rel):
                raise self._damaged(f"lists {rel[:120]!r}, a file intake never writes")
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                raise self._damaged(f"gives {rel} no sha256")
        return listed

    def _damaged(self, why: str) -> UsageError:
        return UsageError(
            f"--out {self.out}: {MANIFEST} {why}; intake cannot tell which files there are its "
            "own and touches none: remove what you no longer want yourself, or choose an "
            "empty directory"
        )

    def digest(self, rel: str) -> str | None:
        """sha256 of out/rel; None where nothing is there, "" where it is no plain file."""
        group, name = rel.split("/")
        if group not in self.group_fds:
            return None
        try:
            return hashlib.sha256(_read_plain(self.group_fds[group], name)).hexdigest()
        except FileNotFoundError:
            return None
        except _NotPlain:
            return ""


def _check_out(out: Path) -> None:
    """Refuse an `out` that is no directory intake can create or write into."""
    out_directory(os.fspath(out))
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        _check_parent(out)
        return
    except OSError as exc:
        raise _refusal(out, exc) from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"--out {out}: is a symbolic link; name the directory it points to "
            "(intake writes through no link)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: is not writable")


def _check_parent(out: Path) -> None:
    """The directory `out` is to be made in must exist: a mistyped path is no request
    to make a tree of directories."""
    parent = out.parent
    try:
        is_directory = stat.S_ISDIR(os.stat(parent).st_mode)
    except FileNotFoundError:
        raise UsageError(f"--out {out}: {parent} does not exist; create it first") from None
    except OSError as exc:
        raise _refusal(out, exc) from None
    if not is_directory:
        raise UsageError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot be created, {parent} is not writable")


def _decide(survey: _Survey, wanted: dict[str, bytes], *, force: bool) -> list[str]:
    """The earlier render's files to remove, or the refusal that leaves `out` untouched."""
    out = survey.out
    if survey.changed:
        raise UsageError(
            f"--out {out}: {_shown(survey.changed)} changed since intake wrote "
            f"{_it(survey.changed)}; even with --force intake replaces or removes only its "
            "files as it wrote them: move your copy out of the directory (or delete it) "
            "and render again"
        )
    if survey.manifest is None and survey.named_like_ours:
        # An intake before the manifest, or the user's own files: the names
        # cannot tell them apart, so neither is touched.
        raise UsageError(
            f"--out {out}: holds files named like intake migrations "
            f"({_shown(survey.named_like_ours)}) but no {MANIFEST} saying intake wrote them; "
            "intake will not replace or remove them, even with --force: move them away "
            "(an older intake's render can simply be deleted), or choose an empty directory"
        )
    foreign = survey.foreign
    if foreign:
        raise UsageError(
            f"--out {out}: intake did not write {_shown(foreign)}, which it would replace; "
            "it never replaces a file it did not write, even with --force: move "
            f"{_it(foreign)} away, or choose an empty directory"
        )
    if survey.present and not force:
        raise UsageError(
            f"--out {out}: holds intake migrations already ({_shown(survey.present)}); "
            "choose an empty directory, or pass --force to replace them"
        )
    return [rel for rel in survey.present if rel not in wanted]


def _commit(survey: _Survey, wanted: dict[str, bytes], stale: list[str]) -> None:
    """Write every file under a temporary name, then put them all in place.

    The manifest goes in last: a render stopped part way leaves files the
    manifest does not vouch for, which the next render refuses rather than
    guesses about.
    """
    out = survey.out
    created: list[tuple[int | None, str]] = []
    temps: list[tuple[int, str, str]] = []

    def undo() -> None:
        for fd, temp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=fd)
        for parent_fd, name in reversed(created):
            with contextlib.suppress(OSError):  # not empty: something stands in it
                os.rmdir(name, dir_fd=parent_fd)

    try:
        if survey.out_fd is None:
            os.mkdir(out)
            created.append((None, os.fspath(out)))
            survey.out_fd = os.open(out, _DIRECTORY)
        for group in sorted({rel.split("/")[0] for rel in wanted} - survey.group_fds.keys()):
            os.mkdir(group, dir_fd=survey.out_fd)
            created.append((survey.out_fd, group))
            survey.group_fds[group] = os.open(group, _DIRECTORY, dir_fd=survey.out_fd)
        for rel, data in wanted.items():
            group, name = rel.split("/")
            temps.append(
                (survey.group_fds[group], _write_temp(survey.group_fds[group], data), name)
            )
        listed = {rel: hashlib.sha256(data).hexdigest() for rel, data in wanted.items()}
        manifest = {"format": MANIFEST_FORMAT, "note": _MANIFEST_NOTE, "files": listed}
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        temps.append((survey.out_fd, _write_temp(survey.out_fd, text.encode()), MANIFEST))
    except OSError as exc:
        undo()
        raise _refusal(out, exc) from None
    placed = 0
    try:
        while temps:
            fd, temp, name = temps[0]
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
            temps.pop(0)
            placed += 1
        for rel in stale:
            group, name = rel.split("/")
            os.unlink(name, dir_fd=survey.group_fds[group])
    except OSError as exc:
        undo()
        after = (
            "some files were replaced and the manifest was not: render again into an "
            "empty directory"
            if placed
            else "nothing was changed"
        )
        raise IntakeError(
            f"--out {out}: could not put the files in place: {exc.strerror}; {after}"
        ) from None


class _NotPlain(Exception):
    """The name is there but is no regular file (a link, a directory, a device)."""


def _read_plain(dir_fd: int, name: str) -> bytes:
    """The bytes of dir_fd/name, a regular file, read without following a link."""
    try:
        # O_NONBLOCK: a FIFO put where a file was expected must not hang the render.
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotPlain("is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotPlain("is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(_MAX_READ + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_READ:
        raise _NotPlain(f"is over {_MAX_READ} bytes, larger than anything intake writes")
    return data


def _write_temp(dir_fd: int, data: bytes) -> str:
    """`data` in a new hidden file under dir_fd, on disk; its name."""
    name = f"{_TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=dir_fd,
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)
    return name


def _refusal(out: Path, exc: OSError) -> IntakeError:
    """An OSError met on `out` as the one line an operator reads."""
    reason = exc.strerror or str(exc)
    # A path or a name under a directory descriptor; an int is the descriptor itself.
    name = os.fspath(exc.filename) if isinstance(exc.filename, str | Path) else ""
    # Name the entry under `out` that failed, but not a temporary file's name.
    shown = name and name != os.fspath(out) and not name.startswith(_TEMP_PREFIX)
    where = f" ({name})" if shown else ""
    if exc.errno in _MACHINE_ERRORS:
        # The argument is fine; the machine is not. Nothing was left behind.
        return IntakeError(f"--out {out}: could not write the files: {reason}; nothing was written")
    return UsageError(f"--out {out}: cannot write there: {reason}{where}")


def _it(rels: list[str]) -> str:
    return "it" if len(rels) == 1 else "them"


def _shown(rels: list[str]) -> str:
    more = f" and {len(rels) - 3} more" if len(rels) > 3 else ""
    return ", ".join(rels[:3]) + more
