"""intake on a Supabase-shaped database: the rendered migrations applied by the
non-superuser owner (twice: nothing changes), an event provisioned with
`intake up`, claimed as `authenticated` with JWT claims the PostgREST way,
drained into the example ledger with one Realtime change per commit; `anon`
can do nothing; the drain-tick job calls pg_net with Vault's URL and tick token."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from intake_cli.engine import schema
from intake_cli.platform.embedded import DATABASE, pg_bindir
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, drain_all
from tests.acceptance.supabase_support import (
    OWNER,
    SupabaseCluster,
    apply_files,
    fingerprint,
)
from tests.conftest import intake, pool_spec, write_config

STAMP = "20250601120000"
# Shaped like `openssl rand -hex 32`, as docs/supabase.md tells operators to make them.
TICK_TOKEN = "9f2c4e71b0d84a6f3e5c1b27d8a90f4e6c3b5a1d2e7f80914c6b3a5d7e2f1c08"
ADMIN_TOKEN = "e4b1f7a2c9d3058e6b2a4f1c7d9e3b5a08f6c2d4e1b7a9c3f5d2e8b0a6c4f193"
CREATE_SLOT = "select pg_create_logical_replication_slot(%s, 'test_decoding')"


@pytest.fixture(scope="module")
def supa(workdir: Path) -> Iterator[SupabaseCluster]:
    cluster = SupabaseCluster(workdir / "supabase")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def rendered(workdir: Path) -> list[Path]:
    out = workdir / "supabase-migrations"
    intake(
        "render", "--target", "supabase", "--out", str(out), "--drain-tick",
        "--timestamp", STAMP, check=True,
    )  # fmt: skip
    return sorted(out.glob("db1/*.sql")) + sorted(out.glob("db2/*.sql"))


@pytest.fixture(scope="module")
def project(supa: SupabaseCluster, rendered: list[Path]) -> str:
    """The project's database with the render applied once by `psql -f`, as the owner."""
    owner = supa.project(DATABASE, tick_stubs=True)
    psql = pg_bindir() / "psql"
    for path in rendered:
        subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", owner, "-f", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
    return owner


@pytest.fixture(scope="module")
def upped(supa: SupabaseCluster, workdir: Path) -> str:
    """Another project whose DB1 and DB2 were made by `intake up` alone, as the owner."""
    owner = supa.project("upped")
    config = write_config(workdir, owner, owner, [pool_spec("drop", 5)])
    intake("up", config=config, check=True)
    return owner


def _rows(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


@pytest.mark.slow
def test_the_render_applies_as_the_owner_and_applying_it_again_changes_nothing(
    supa, rendered, project
):
    assert [p.name.split("_intake_")[1] for p in rendered] == [
        "pgmq.sql", "schema.sql", "0001_engine.sql", "0002_drain.sql", "0003_telemetry.sql",
        "0004_crash_safety.sql", "0005_row_security.sql", "0006_fair_opening.sql",
        "0007_logged_unit_sequences.sql", "0008_opening_in_db1.sql",
        "0009_webhook_governor.sql", "0010_governor_pause_and_ramp.sql",
        "0011_drain_in_place_updates.sql", "functions.sql",
        "cron.sql",
        "drain_tick.sql", "example_ledger.sql",
    ]  # fmt: skip
    assert _rows(project, "select rolsuper, current_user::text from pg_roles where rolname = %s",
                 (OWNER,)) == [(False, OWNER)]  # fmt: skip
    before = fingerprint(project)
    apply_files(project, rendered)
    after = fingerprint(project)
    for key in before:
        assert set(after[key]) ^ set(before[key]) == set(), key
    assert after == before

    assert before["versions"][-1][0] == schema.latest_version()
    # This machine's pg_cron is 1.4: minute schedules and the minute loop.
    jobs = {name: (when, user) for name, when, _, user in before["cron"]}
    assert jobs == {
        "intake-metrics": ("* * * * *", OWNER),
        "intake-maintenance": ("* * * * *", OWNER),
        "intake-drain-tick": ("* * * * *", OWNER),
    }
    functions = {row[0] for row in before["functions"]}
    assert "intake.collect_metrics_for_a_minute(integer)" in functions
    assert ("public", "tickets") in before["publication"]
    # Supabase's auth.uid() is the platform's, untouched.
    owner_of_uid = (
        "select pg_get_userbyid(proowner)::text from pg_proc where oid = 'auth.uid()'::regprocedure"
    )
    assert _rows(project, owner_of_uid) == [("supabase_auth_admin",)]


def _claim(dsn: str, role: str, claims: dict | None, pool: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        conn.execute(f"set local role {role}")
        if claims is not None:
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        return conn.execute(
            "select outcome, user_id from public.claim_resource(%s)", (pool,)
        ).fetchone()


def _changes(supa: SupabaseCluster, dbname: str, slot: str) -> list[str]:
    """What logical decoding (Realtime's mechanism) saw on public.tickets."""
    lines = _rows(
        supa.superuser(dbname),
        "select data from pg_logical_slot_get_changes(%s, null, null)",
        (slot,),
    )
    return [line for (line,) in lines if line.startswith("table public.tickets:")]


@pytest.mark.slow
def test_an_event_is_claimed_as_authenticated_drained_exactly_and_anon_can_do_nothing(
    supa, project, workdir
):
    slot = f"tickets_{uuid.uuid4().hex[:8]}"
    with WebhookServer() as hook:
        config = write_config(
            workdir, project, project,
            [pool_spec("event", 20, validation_webhook_url=hook.url, retry_base_seconds=0.2)],
        )  # fmt: skip
        intake("up", config=config, check=True)
        authenticator = supa.as_role("authenticator", DATABASE)
        buyers = [str(uuid.uuid4()) for _ in range(25)]
        outcomes = [
            _claim(authenticator, "authenticated", {"sub": b, "role": "authenticated"}, "event")
            for b in buyers
        ]
        assert [o for o, _ in outcomes] == ["claimed"] * 20 + ["sold_out"] * 5
        assert [u for _, u in outcomes] == buyers

        # anon: no claim, no table.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            _claim(authenticator, "anon", {"role": "anon"}, "event")
        for table in ("public.tickets", "public.legacy_orders", "intake.engine_config",
                      "intake.allocations", "pgmq.q_intents"):  # fmt: skip
            with psycopg.connect(authenticator) as conn, pytest.raises(psycopg.Error):
                conn.execute("set local role anon")
                conn.execute(f"select * from {table}")

        _rows(supa.superuser(DATABASE), CREATE_SLOT, (slot,))
        try:
            drain_all(Event(config, project, project, "event"), 20)
            changes = _changes(supa, DATABASE, slot)
        finally:
            _rows(supa.superuser(DATABASE), "select pg_drop_replication_slot(%s)", (slot,))

    tickets = _rows(
        project,
        "select t.user_id, o.cust_ref, o.status from public.tickets t"
        " join public.legacy_orders o using (ord_no) where t.pool_id = 'event'",
    )
    assert sorted(t[0] for t in tickets) == sorted(buyers[:20])
    assert all(user == ref and status == "C" for user, ref, status in tickets)
    assert len(changes) == 20
    assert all(" INSERT: " in change for change in changes)
    # A buyer reads their own ticket, as Realtime and PostgREST would let them.
    with psycopg.connect(authenticator) as conn:
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": buyers[0], "role": "authenticated"}),))  # fmt: skip
        assert conn.execute("select user_id from public.tickets").fetchall() == [(buyers[0],)]


EXPOSED_TABLES = """
select n.nspname || '.' || c.relname, c.relrowsecurity,
       has_table_privilege('anon', c.oid, 'select, insert, update, delete')
       or has_table_privilege('authenticated', c.oid, 'select, insert, update, delete')
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname in ('public', 'intake') and c.relkind in ('r', 'p')
 order by 1
"""


@pytest.mark.parametrize("made_by", ["render", "up"])
def test_every_table_in_an_exposed_schema_has_row_level_security(made_by, request):
    dsn = request.getfixturevalue("project" if made_by == "render" else "upped")
    tables = _rows(dsn, EXPOSED_TABLES)
    assert {"public.tickets", "public.legacy_orders", "intake.allocations"} <= {
        t for t, _, _ in tables
    }
    # Reachable by an API role without RLS: none.
    assert [t for t, rls, granted in tables if granted and not rls] == []
    # Supabase's linter asks more: RLS on every table in an exposed schema.
    assert [t for t, rls, _ in tables if not rls] == []


@pytest.mark.parametrize("made_by", ["render", "up"])
def test_each_commit_is_one_change_on_the_realtime_table(made_by, supa, request):
    dsn = request.getfixturevalue("project" if made_by == "render" else "upped")
    dbname = DATABASE if made_by == "render" else "upped"
    slot = f"commit_{made_by}_{uuid.uuid4().hex[:8]}"
    payloads = [
        {"idempotency_key": str(uuid.uuid4()), "pool_id": "p", "user_id": f"u{n}",
         "resource_id": str(uuid.uuid4()), "unit_no": n, "claimed_at": "2025-06-01T12:00:00Z"}
        for n in range(2)
    ]  # fmt: skip
    _rows(supa.superuser(dbname), CREATE_SLOT, (slot,))
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("set local role service_role")
            answers = [
                conn.execute(
                    "select public.finalize_transaction(%s::jsonb)", (json.dumps(p),)
                ).fetchone()[0]
                for p in [*payloads, payloads[0]]
            ]
        changes = _changes(supa, dbname, slot)
    finally:
        _rows(supa.superuser(dbname), "select pg_drop_replication_slot(%s)", (slot,))
    assert [a["status"] for a in answers] == ["committed", "committed", "duplicate"]
    assert len(changes) == 2, changes
    assert all(" INSERT: " in change for change in changes)


def test_the_drain_tick_job_posts_with_vaults_tick_token_never_the_admin_token(supa, project):
    """The job's bearer token is `intake_tick_token`, which opens the tick endpoint
    alone; an admin token left in Vault (as earlier intakes asked) is never sent."""
    ((command,),) = _rows(
        project, "select command from cron.job where jobname = 'intake-drain-tick'"
    )
    assert "intake_admin_token" not in command
    with psycopg.connect(supa.superuser(DATABASE), autocommit=True) as conn:
        conn.execute(
            "insert into vault.decrypted_secrets values"
            " ('intake_tick_url', 'https://intake.example/api/drain/tick?pool=event'),"
            " ('intake_admin_token', %s)"
            " on conflict (name) do update set decrypted_secret = excluded.decrypted_secret",
            (ADMIN_TOKEN,),
        )
        conn.execute("delete from vault.decrypted_secrets where name = 'intake_tick_token'")
    # Without the tick token the job sends nothing, admin token or not.
    assert _rows(project, command) == []
    with psycopg.connect(supa.superuser(DATABASE), autocommit=True) as conn:
        conn.execute(
            "insert into vault.decrypted_secrets values ('intake_tick_token', %s)", (TICK_TOKEN,)
        )
    ((call_id,),) = _rows(project, command)
    ((url, headers, body),) = _rows(
        supa.superuser(DATABASE), "select url, headers, body from net.calls where id = %s",
        (call_id,),
    )  # fmt: skip
    assert url == "https://intake.example/api/drain/tick?pool=event"
    assert headers["Authorization"] == f"Bearer {TICK_TOKEN}"
    assert ADMIN_TOKEN not in json.dumps(headers)
    assert body == {}


def test_the_render_refuses_a_database_that_is_not_a_supabase_project(rendered, empty_db_dsn):
    with pytest.raises(psycopg.errors.RaiseException, match="need a Supabase project"):
        apply_files(empty_db_dsn, rendered[:1])


def test_the_render_says_how_to_enable_pgmq_where_it_is_missing(supa, rendered):
    owner = supa.project("no_pgmq_yet")
    with psycopg.connect(supa.superuser("no_pgmq_yet"), autocommit=True) as conn:
        conn.execute("drop schema pgmq cascade")
    with pytest.raises(psycopg.errors.RaiseException, match="pgmq is neither installed"):
        apply_files(owner, rendered[:1])
