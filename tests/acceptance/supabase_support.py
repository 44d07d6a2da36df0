"""A Supabase-shaped PostgreSQL for the tests: its roles, auth.uid(), pgmq and
pg_cron made by a superuser, and a project owner who is not one.

On Supabase the `postgres` role owns the project's objects but is not a
superuser: it has BYPASSRLS and CREATEROLE, creates extensions through
supautils, and is handed pgmq's objects by the platform's post-install.
Here the cluster's superuser (`intake`, standing in for `supabase_admin`)
does what the platform would, and `project_owner` plays `postgres`.

The cluster is the suite's own (wal_level = logical, for logical decoding;
pg_cron preloaded for its `intake` database) so nothing here touches the
other tests' clusters.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
from pgmq.install import install_pgmq_from_sql
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from intake_cli.platform.config import EmbeddedSettings
from intake_cli.platform.embedded import DATABASE, Cluster, EmbeddedClusters

OWNER = "project_owner"
API_ROLES = ("anon", "authenticated", "service_role")

ROLES = """
do $roles$
begin
    if not exists (select from pg_roles where rolname = 'supabase_admin') then
        create role supabase_admin superuser nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'supabase_auth_admin') then
        create role supabase_auth_admin nologin noinherit createrole;
    end if;
    if not exists (select from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
    if not exists (select from pg_roles where rolname = 'project_owner') then
        create role project_owner login createrole createdb bypassrls;
    end if;
    -- PostgREST logs in as authenticator and switches to the JWT's role.
    if not exists (select from pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
end
$roles$;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to project_owner;
"""

# What the platform puts in every project database, as the superuser.
PROJECT = """
alter database {db} owner to project_owner;
alter schema public owner to project_owner;
grant usage on schema public to anon, authenticated, service_role;
-- Supabase's default privileges: what the owner creates in public is granted
-- to the API roles outright.
alter default privileges for role project_owner in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges for role project_owner in schema public
    grant all on sequences to anon, authenticated, service_role;
alter default privileges for role project_owner in schema public
    grant all on functions to anon, authenticated, service_role;

create schema auth authorization supabase_auth_admin;
create function auth.uid() returns uuid language sql stable as $uid$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$uid$;
alter function auth.uid() owner to supabase_auth_admin;
grant usage on schema auth to anon, authenticated, service_role, project_owner;
grant execute on function auth.uid() to anon, authenticated, service_role, project_owner;

create publication supabase_realtime;
alter publication supabase_realtime owner to project_owner;
"""

# pgmq's post-install on Supabase hands its objects to the owner.
PGMQ_GRANTS = """
grant usage, create on schema pgmq to project_owner;
grant all on all tables in schema pgmq to project_owner;
grant all on all sequences in schema pgmq to project_owner;
grant execute on all functions in schema pgmq to project_owner;
alter default privileges in schema pgmq grant all on tables to project_owner;
alter default privileges in schema pgmq grant all on sequences to project_owner;
"""

CRON = """
create extension if not exists pg_cron;
grant usage on schema cron to project_owner;
grant all on all tables in schema cron to project_owner;
grant execute on all functions in schema cron to project_owner;
"""

# Vault and pg_net as the tick job sees them, owned by the superuser like
# Supabase's: a secrets view stand-in and an http_post that records its call.
TICK_STUBS = """
create schema if not exists vault;
create table if not exists vault.decrypted_secrets (name text primary key, decrypted_secret text);
create schema if not exists net;
create table if not exists net.calls (
    id bigint generated always as identity, url text, headers jsonb, body jsonb);
create or replace function net.http_post(
    url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
    headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
    timeout_milliseconds integer default 5000)
returns bigint language sql security definer set search_path = pg_catalog as $post$
    insert into net.calls (url, headers, body) values (url, headers, body) returning id
$post$;
grant usage on schema vault, net to project_owner;
grant select on vault.decrypted_secrets to project_owner;
grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to project_owner;
"""


class SupabaseCluster:
    """The cluster, its superuser DSNs, and the owner's and API roles' DSNs."""

    def __init__(self, directory: Path) -> None:
        self.clusters = EmbeddedClusters(
            # synchronous_commit on, as on Supabase: logical decoding reads only
            # WAL that is flushed, so a commit is decodable once it returns.
            directory,
            EmbeddedSettings(max_connections=200, synchronous_commit=True),
        )
        self.password = secrets.token_hex(16)
        self.passfile = directory.parent / "supabase-roles.pgpass"
        self.cluster: Cluster | None = None

    def start(self) -> None:
        self.cluster = self.clusters.ensure(("db1",))["db1"]
        with psycopg.connect(self.superuser(), autocommit=True) as conn:
            conn.execute("alter system set wal_level = 'logical'")
            conn.execute("alter system set max_wal_senders = 4")
        self.clusters.halt(("db1",))
        self.cluster = self.clusters.ensure(("db1",))["db1"]
        with psycopg.connect(self.superuser(), autocommit=True) as conn:
            conn.execute(ROLES)
            for role in (OWNER, "authenticator"):
                conn.execute(
                    sql.SQL("alter role {} password {}").format(
                        sql.Identifier(role), sql.Literal(self.password)
                    )
                )
        # intake reads passwords from the environment or a passfile, never
        # from its configuration file: the roles' DSNs name this one.
        self.passfile.write_text(
            "".join(
                f"127.0.0.1:{self.cluster.port}:*:{role}:{self.password}\n"
                for role in (OWNER, "authenticator")
            )
        )
        self.passfile.chmod(0o600)

    def stop(self) -> None:
        self.clusters.stop()

    def superuser(self, dbname: str = "postgres") -> str:
        assert self.cluster is not None
        return self.cluster.dsn_for(dbname)

    def as_role(self, role: str, dbname: str) -> str:
        params = conninfo_to_dict(self.superuser(dbname))
        return make_conninfo("", **{**params, "user": role, "passfile": str(self.passfile)})

    def project(self, dbname: str = DATABASE, *, tick_stubs: bool = False) -> str:
        """Make `dbname` a Supabase project's database; returns the owner's DSN.

        Only the cluster's `intake` database has pg_cron (cron.database_name).
        """
        with psycopg.connect(self.superuser(), autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
        with psycopg.connect(self.superuser(dbname)) as conn:
            conn.execute(sql.SQL(PROJECT).format(db=sql.Identifier(dbname)))
            install_pgmq_from_sql(conn=conn)
            conn.execute(PGMQ_GRANTS)
            if dbname == DATABASE:
                conn.execute(CRON)
            if tick_stubs:
                conn.execute(TICK_STUBS)
            conn.commit()
        return self.as_role(OWNER, dbname)


def apply_files(dsn: str, files: list[Path]) -> None:
    """Each file as `psql -f` sends it: its whole text, in order, autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files:
            conn.execute(path.read_text())


FINGERPRINT = {
    "functions": """
        select p.oid::regprocedure::text, md5(p.prosrc), coalesce(p.proacl::text, ''),
               coalesce(array_to_string(p.proconfig, ','), '')
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname in ('intake', 'public', 'auth', 'pgmq') order by 1""",
    "tables": """
        select c.oid::regclass::text, c.relkind::text, c.relrowsecurity,
               coalesce(c.relacl::text, ''),
               (select count(*) from pg_attribute a where a.attrelid = c.oid and a.attnum > 0)
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname in ('intake', 'public', 'pgmq') order by 1""",
    "policies": "select schemaname, tablename, policyname, qual from pg_policies order by 1, 2, 3",
    "versions": "select version, name from intake.schema_version order by 1",
    "cron": "select jobname, schedule, command, username from cron.job order by 1",
    "publication": "select schemaname, tablename from pg_publication_tables order by 1, 2",
}


def fingerprint(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(query).fetchall() for name, query in FINGERPRINT.items()}
