-- schema_version: the newest migration applied to DB1
select coalesce(max(version), 0) as version from intake.schema_version;

-- record_migration: remember that a migration ran
insert into intake.schema_version (version, name) values (%(version)s, %(name)s);

-- intake_schema_exists: whether DB1 was provisioned at all
select to_regclass('intake.engine_config') is not null as provisioned;

-- pgmq_schema_exists: whether a pgmq schema is already there (the SQL install is not re-runnable)
select exists (select from pg_namespace where nspname = 'pgmq') as present;

-- pgmq_extension: the pgmq extension, installed or available to install
select
    (select extversion from pg_extension where extname = 'pgmq') as installed_version,
    (select default_version from pg_available_extensions where name = 'pgmq') as available_version;

-- pg_cron_ready: pg_cron is preloaded and schedules jobs from this database, so it can be created
select exists (select from pg_available_extensions where name = 'pg_cron')
       and current_setting('shared_preload_libraries') ~ '(^|[ ,])pg_cron([ ,]|$)'
       and coalesce(current_setting('cron.database_name', true), 'postgres') = current_database()
       as ready;

-- pg_cron_version: the pg_cron extension in use, if any
select extversion from pg_extension where extname = 'pg_cron';

-- pgmq_install: which pgmq DB1 runs on
select source, version from intake.pgmq_install;

-- record_pgmq_install: remember which pgmq DB1 runs on
insert into intake.pgmq_install (source, version) values (%(source)s, %(version)s)
on conflict (singleton) do nothing;

-- pool_configs: every provisioned pool's runtime settings
select pool_id, inventory, per_user_limit, paused, batch_size, visibility_timeout,
       validation_webhook_url, commit_rpc_name, max_retries, commit_rate_per_sec,
       retry_base_seconds, retry_max_seconds, unit_seq::text as unit_seq
  from intake.engine_config
 order by pool_id;

-- insert_pool: provision a pool's runtime settings
insert into intake.engine_config (
    pool_id, inventory, per_user_limit, batch_size, visibility_timeout,
    validation_webhook_url, commit_rpc_name, max_retries, commit_rate_per_sec,
    retry_base_seconds, retry_max_seconds, unit_seq)
values (
    %(pool_id)s, %(inventory)s, %(per_user_limit)s, %(batch_size)s, %(visibility_timeout)s,
    %(validation_webhook_url)s, %(commit_rpc_name)s, %(max_retries)s, %(commit_rate_per_sec)s,
    %(retry_base_seconds)s, %(retry_max_seconds)s, %(unit_seq)s::regclass);

-- update_pool: make a pool's runtime settings match the configuration
update intake.engine_config
   set inventory = %(inventory)s,
       per_user_limit = %(per_user_limit)s,
       batch_size = %(batch_size)s,
       visibility_timeout = %(visibility_timeout)s,
       validation_webhook_url = %(validation_webhook_url)s,
       commit_rpc_name = %(commit_rpc_name)s,
       max_retries = %(max_retries)s,
       commit_rate_per_sec = %(commit_rate_per_sec)s,
       retry_base_seconds = %(retry_base_seconds)s,
       retry_max_seconds = %(retry_max_seconds)s,
       updated_at = now()
 where pool_id = %(pool_id)s;

-- seeded_units: how many units a pool has and its highest unit number
select count(*) as units, coalesce(max(unit_no), 0) as high
  from intake.allocations where pool_id = %(pool_id)s;

-- seed_units: add units lo..hi to a pool, each with a fresh resource id
insert into intake.allocations (pool_id, unit_no, resource_id)
select %(pool_id)s, n, gen_random_uuid()
  from generate_series(%(lo)s::bigint, %(hi)s::bigint) as n;

-- sequence_position: how far a pool's unit sequence has gone
select coalesce(pg_sequence_last_value(unit_seq), 0) as position
  from intake.engine_config where pool_id = %(pool_id)s;

-- release_range: put units lo..hi on the release list (units added after the sequence passed them)
insert into intake.released_units (pool_id, unit_no)
select %(pool_id)s, n from generate_series(%(lo)s::bigint, %(hi)s::bigint) as n
on conflict do nothing;

-- recover_skipped_units: put units skipped by aborted claims back on the release list
select intake.recover_skipped_units(%(pool_id)s) as recovered;

-- pool_exists: whether a pool is provisioned
select 1 from intake.engine_config where pool_id = %(pool_id)s;

-- claim: one claim for a trusted backend
select (r).* from (select intake.claim_resource(%(pool_id)s, %(user_id)s) as r) as claim;

-- claim_batch: one claim per user, in one statement, for a trusted backend (answers in input order)
select * from intake.claim_resources(%(pool_id)s, %(user_ids)s::text[]);

