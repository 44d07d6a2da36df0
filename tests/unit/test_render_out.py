"""`intake render --out DIR [--force]` against what DIR already holds (issue 21).

Through the CLI in-process, as an operator runs it: the exit code, the one
line it prints, and every byte on disk before and after. `--force` replaces
or removes only the files an earlier render's manifest lists, unchanged; a
bad --out is refused with exit 2 and nothing written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from intake_cli.engine import render
from tests.corpus.harness import flat, run_main, tree

FIRST, LATER = "20250601120000", "20250701120000"
USER_FILES = {
    "db1/20250601000000_add_intake_table.sql": b"create table public.intake (id int);\n",
    "db2/20250601000000_seed_intake_users.sql": b"insert into users values (1);\n",
    # Named exactly as intake names its files, and still the user's.
    "db1/20250601000001_intake_users.sql": b"create table public.intake_users ();\n",
}


def _render(out: Path | str, *more: str, stamp: str = LATER) -> tuple[int, str]:
    code, output = run_main(
        ["render", "--target", "supabase", "--out", str(out), "--timestamp", stamp, *more]
    )
    assert "Traceback" not in output
    return code, flat(output)


def _first_render(out: Path) -> dict[str, str]:
    code, output = _render(out, stamp=FIRST)
    assert code == 0, output
    return tree(out)


def _put(out: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)


def _intake_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.glob("db*/*_intake_*.sql"))


def test_force_replaces_the_earlier_render_and_leaves_the_users_files_byte_for_byte(tmp_path):
    out = tmp_path / "out"
    _first_render(out)
    _put(out, USER_FILES)
    code, output = _render(out, "--force")
    assert code == 0, output
    for rel, data in USER_FILES.items():
        assert (out / rel).read_bytes() == data, rel
    ours = [p for p in _intake_files(out) if p not in USER_FILES]
    assert ours and all(p[4:12] == LATER[:8] for p in ours)
    listed = json.loads((out / render.MANIFEST).read_text())["files"]
    assert sorted(listed) == ours
    for rel, digest in listed.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest


def test_without_force_an_earlier_render_is_refused_and_nothing_changes(tmp_path):
    out = tmp_path / "out"
    _first_render(out)
    _put(out, USER_FILES)
    before = tree(tmp_path)
    code, output = _render(out)
    assert code == 2
    assert f"error: --out {out}: holds intake migrations already" in output
    assert "pass --force to replace them" in output
    assert tree(tmp_path) == before


def test_force_refuses_an_intake_file_the_user_edited_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    _first_render(out)
    edited = out / "db1" / f"{FIRST}_intake_pgmq.sql"
    edited.write_bytes(edited.read_bytes() + b"-- my change\n")
    before = tree(tmp_path)
    for more in ([], ["--force"]):
        code, output = _render(out, *more)
        assert code == 2, output
        assert f"db1/{FIRST}_intake_pgmq.sql changed since intake wrote it" in output
        assert "even with --force" in output
        assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("earlier", "fragment"),
    [
        (True, f"intake did not write db1/{LATER}_intake_pgmq.sql"),
        (False, f"holds files named like intake migrations (db1/{LATER}_intake_pgmq.sql)"),
    ],
    ids=["beside-a-render", "alone"],
)
def test_a_user_file_under_the_very_name_intake_would_write_is_never_replaced(
    tmp_path, earlier, fragment
):
    out = tmp_path / "out"
    if earlier:
        _first_render(out)
    _put(out, {f"db1/{LATER}_intake_pgmq.sql": b"-- my own pgmq setup\n"})
    before = tree(tmp_path)
    code, output = _render(out, "--force")
    assert code == 2, output
    assert fragment in output and "even with --force" in output
    assert tree(tmp_path) == before


def test_a_render_without_a_manifest_is_never_removed_even_with_force(tmp_path):
    """An intake before the manifest left no record; its files and the user's look alike."""
    out = tmp_path / "out"
    _first_render(out)
    (out / render.MANIFEST).unlink()
    before = tree(tmp_path)
    code, output = _render(out, "--force")
    assert code == 2, output
    assert f"no {render.MANIFEST} saying intake wrote them" in output
    assert tree(tmp_path) == before


def test_a_render_finds_its_files_gone_and_writes_the_new_set(tmp_path):
    out = tmp_path / "out"
    _first_render(out)
    for path in out.glob("db1/*.sql"):
        path.unlink()
    code, output = _render(out, "--force")
    assert code == 0, output
    assert all(p[4:12] == LATER[:8] for p in _intake_files(out))


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "elsewhere"
    _put(victim, {f"db1/{FIRST}_intake_pgmq.sql": b"-- not in out\n", "victim.sql": b"keep\n"})
    return victim


def _listing(*rels: str) -> Callable[[Path, Path], None]:
    def tamper(out: Path, victim: Path) -> None:
        document = json.loads((out / render.MANIFEST).read_text())
        digest = hashlib.sha256(b"keep\n").hexdigest()
        document["files"].update({rel.format(victim=victim): digest for rel in rels})
        (out / render.MANIFEST).write_text(json.dumps(document))

    return tamper


def _manifest_text(text: str) -> Callable[[Path, Path], None]:
    return lambda out, victim: (out / render.MANIFEST).write_text(text)


def _manifest_link(out: Path, victim: Path) -> None:
    real = victim / "manifest.json"
    (out / render.MANIFEST).rename(real)
    (out / render.MANIFEST).symlink_to(real)


def _group_link(out: Path, victim: Path) -> None:
    (out / "db1").rename(victim / "moved-db1")
    (out / "db1").symlink_to(victim / "db1")


def _file_link(out: Path, victim: Path) -> None:
    # A link with the very bytes intake wrote, in place of the file itself.
    path = out / "db1" / f"{FIRST}_intake_pgmq.sql"
    (victim / "db1" / path.name).write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(victim / "db1" / path.name)


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (_listing("../elsewhere/victim.sql"), "a file intake never writes"),
        (_listing("{victim}/victim.sql"), "a file intake never writes"),
        (_listing("db1/../../elsewhere/victim.sql"), "a file intake never writes"),
        (_listing("db1/victim.sql"), "a file intake never writes"),
        (_manifest_text("not json"), "is not JSON"),
        (_manifest_text("[]"), "is not format 1"),
        (_manifest_text("[" * 100_000), "is not JSON"),
        # Python refuses to read an integer of more than 4,300 digits.
        (_manifest_text('{"format": 1, "files": {}, "n": ' + "9" * 5000 + "}"), "is not JSON"),
        (
            _manifest_text(f'{{"format": 1, "files": {{"db1/{FIRST}_intake_x.sql": 3}}}}'),
            "no sha256",
        ),
        (_manifest_link, "is a symbolic link"),
        (_group_link, "db1 is a symbolic link"),
        (_file_link, "changed since intake wrote it"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "dotdot-inside",
        "not-our-name",
        "not-json",
        "not-an-object",
        "too-deep",
        "huge-number",
        "no-hash",
        "manifest-link",
        "group-link",
        "file-link",
    ],
)
def test_a_tampered_directory_is_refused_and_nothing_outside_it_is_touched(
    tmp_path, tamper, fragment
):
    out = tmp_path / "out"
    _first_render(out)
    victim = _outside(tmp_path)
    tamper(out, victim)
    before = tree(tmp_path)
    code, output = _render(out, "--force")
    assert code == 2, output
    assert f"error: --out {out}:" in output and fragment in output
    assert tree(tmp_path) == before
    assert (victim / "victim.sql").read_bytes() == b"keep\n"


def _out_is_a_file(base: Path) -> str:
    (base / "out").write_text("mine\n")
    return "out"


def _group_is_a_file(group: str) -> Callable[[Path], str]:
    def setup(base: Path) -> str:
        (base / "out").mkdir()
        (base / "out" / group).write_text("mine\n")
        return "out"

    return setup


def _target_is_a_directory(base: Path) -> str:
    _first_render(base / "out")
    # The one file in db2/, a second after each of db1/'s (as many as there are migrations).
    after = len(list((base / "out" / "db1").glob("*.sql")))
    (base / "out" / "db2" / f"{20250701120000 + after}_intake_example_ledger.sql").mkdir()
    return "out"


def _target_is_a_fifo(base: Path) -> str:
    # Read without O_NONBLOCK, a FIFO would hang the render until a writer came.
    _first_render(base / "out")
    os.mkfifo(base / "out" / "db1" / f"{LATER}_intake_pgmq.sql")
    return "out"


def _out_is_a_link(base: Path) -> str:
    (base / "real").mkdir()
    (base / "out").symlink_to(base / "real")
    return "out"


def _under_a_file(base: Path) -> str:
    (base / "file").write_text("mine\n")
    return "file/out"


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (_out_is_a_file, "--out out: exists and is not a directory"),
        (_group_is_a_file("db1"), "--out out: db1 exists and is not a directory"),
        (_group_is_a_file("db2"), "--out out: db2 exists and is not a directory"),
        (_target_is_a_directory, "_intake_example_ledger.sql"),
        (_target_is_a_fifo, f"intake did not write db1/{LATER}_intake_pgmq.sql"),
        (_out_is_a_link, "--out out: is a symbolic link"),
        (_under_a_file, "--out file/out: cannot write there: Not a directory"),
        (lambda base: "missing/out", "--out missing/out: missing does not exist"),
        (lambda base: "", "--out '': empty; name a directory"),
        (lambda base: " \t", "--out ' \\t': only whitespace"),
        (lambda base: "out\0x", "contains a NUL character"),
        # As root the write itself fails; as anyone else the permission check does.
        (lambda base: "/proc/intake-render", "--out /proc/intake-render:"),
        (lambda base: "/proc", "--out /proc:"),
        (lambda base: "x" * 300, "File name too long"),
    ],
    ids=[
        "out-file",
        "db1-file",
        "db2-file",
        "target-dir",
        "target-fifo",
        "out-link",
        "under-file",
        "parent-missing",
        "empty",
        "whitespace",
        "nul",
        "proc-child",
        "proc",
        "name-too-long",
    ],
)
def test_an_unusable_out_is_refused_with_exit_2_and_nothing_written(
    tmp_path, monkeypatch, setup, fragment
):
    # Relative --out values resolve here, so a wrongly accepted "" writes only here.
    monkeypatch.chdir(tmp_path)
    out = setup(tmp_path)
    before = tree(tmp_path)
    code, output = _render(out, "--force")
    assert code == 2, output
    assert output.strip().startswith("error: --out") and fragment in output
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_directory_without_write_permission_is_refused(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    before = tree(tmp_path)
    code, output = _render(tmp_path / "locked" / "out")
    assert code == 2 and "is not writable" in output
    assert tree(tmp_path) == before


def _failing(name: str, error: int, after: int) -> Callable[..., object]:
    """os.<name> that works `after` times, then fails with `error` (a full disk, no permission)."""
    real = getattr(os, name)
    calls = {"n": 0}

    def call(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize(
    ("name", "error", "after", "exit_code"),
    [
        ("write", errno.ENOSPC, 5, 1),
        ("write", errno.EDQUOT, 0, 1),
        ("fsync", errno.EIO, 11, 1),
        ("open", errno.EACCES, 4, 2),
        ("replace", errno.EACCES, 0, 1),
    ],
    ids=["disk-full", "quota", "io-error", "permission", "rename"],
)
@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-earlier"])
def test_a_failure_while_writing_leaves_the_directory_as_it_was(
    tmp_path, monkeypatch, name, error, after, exit_code, earlier
):
    out = tmp_path / "out"
    if earlier:
        _first_render(out)
        _put(out, USER_FILES)
    before = tree(tmp_path)
    monkeypatch.setattr(os, name, _failing(name, error, after))
    code, output = _render(out, "--force")
    monkeypatch.undo()
    assert code == exit_code, output
    assert f"error: --out {out}:" in output and os.strerror(error) in output
    assert tree(tmp_path) == before


def test_a_directory_it_cannot_list_is_refused_with_exit_2(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _first_render(out)
    before = tree(tmp_path)
    monkeypatch.setattr(os, "listdir", _failing("listdir", errno.EACCES, 0))
    code, output = _render(out, "--force")
    monkeypatch.undo()
    assert code == 2, output
    assert f"error: --out {out}: cannot write there: Permission denied" in output
    assert tree(tmp_path) == before
