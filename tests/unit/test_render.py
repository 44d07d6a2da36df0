"""The Supabase render's files, without a database: names, order, and what
they must and must not contain."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

import pytest

from intake_cli.engine import render, schema
from intake_cli.platform.errors import UsageError

STAMP = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def _files(**kwargs: object) -> dict[str, render.MigrationFile]:
    files = render.supabase_migrations(STAMP, **kwargs)  # type: ignore[arg-type]
    return {f.name.split("_intake_")[1].removesuffix(".sql"): f for f in files}


def test_files_are_supabase_migrations_one_second_apart_db1_before_db2():
    files = render.supabase_migrations(STAMP, drain_tick=True)
    names = [f.name for f in files]
    assert all(re.fullmatch(r"\d{14}_intake_[a-z0-9_]+\.sql", n) for n in names)
    assert [n[:14] for n in names] == [f"202506011200{s:02d}" for s in range(len(names))]
    groups = [f.group for f in files]
    assert groups == sorted(groups) and groups[-1] == "db2"
    migrations = [n for n in names if re.search(r"_intake_\d{4}_", n)]
    assert len(migrations) == len(schema.migrations())


def test_pg_cron_15_and_newer_collect_every_five_seconds_without_the_minute_loop():
    cron = _files()["cron"].sql
    seconds_branch = cron.split("if seconds then", 1)[1].split("else", 1)[0]
    assert "'5 seconds', 'select intake.collect_metrics()'" in seconds_branch
    assert "drop procedure if exists intake.collect_metrics_for_a_minute" in seconds_branch
    assert "collect_metrics_for_a_minute(5)" not in seconds_branch


def test_the_drain_tick_is_optional_and_reads_its_url_and_token_from_vault():
    assert "drain_tick" not in _files()
    tick = _files(drain_tick=True)["drain_tick"].sql
    assert "case when seconds then '5 seconds' else '* * * * *' end" in tick
    assert "vault.decrypted_secrets" in tick and "net.http_post(" in tick
    assert "url.name = 'intake_tick_url' and token.name = 'intake_tick_token'" in tick


def test_the_drain_tick_never_asks_vault_for_the_admin_token():
    """The admin token also pauses pools and purges the DLQ: it stays with the
    operator, and the job carries the tick token, which opens the tick alone."""
    tick = _files(drain_tick=True)["drain_tick"].sql
    command = tick.split("$command$")[1]
    assert "admin" not in command.lower()
    assert re.findall(r"'(intake_\w+)'", command) == ["intake_tick_url", "intake_tick_token"]
    header = tick.split("do $tick$")[0]
    assert "vault.create_secret('<INTAKE_TICK_TOKEN>', 'intake_tick_token')" in header
    assert "'intake_admin_token'" not in header


def test_the_render_never_creates_supabase_roles_or_auth_uid():
    for f in render.supabase_migrations(STAMP, drain_tick=True):
        text = f.sql.lower()
        assert "create role" not in text, f.name
        assert "function auth.uid" not in text, f.name


def test_the_queue_name_reaches_the_functions_quoted_and_is_checked():
    functions = _files(queue_name="sale")["functions"].sql
    assert '"pgmq"."q_sale"' in functions and '"pgmq"."a_sale_dlq"' in functions
    with pytest.raises(UsageError, match="--queue-name"):
        render.supabase_migrations(STAMP, "Bad; drop")


def test_a_directory_holding_an_earlier_render_is_refused_unless_forced(tmp_path):
    render.write(render.supabase_migrations(STAMP), tmp_path)
    later = render.supabase_migrations(datetime(2025, 7, 1, tzinfo=UTC))
    with pytest.raises(UsageError, match="--force"):
        render.write(later, tmp_path)
    render.write(later, tmp_path, force=True)
    assert sorted(p.name[:8] for p in tmp_path.glob("db*/*.sql")) == ["20250701"] * len(later)
    listed = json.loads((tmp_path / render.MANIFEST).read_text())["files"]
    assert listed == {
        f"{f.group}/{f.name}": hashlib.sha256(f.sql.encode()).hexdigest() for f in later
    }


def test_an_unreadable_timestamp_is_refused():
    with pytest.raises(UsageError, match="YYYYMMDDHHMMSS"):
        render.parse_stamp("2025-06-01")
