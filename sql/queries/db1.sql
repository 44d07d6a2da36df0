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

-- pg_cron_ready: pg_cron is preloaded and schedules jobs from this database, so it can be created (a role that may not read shared_preload_libraries, like Supabase's owner, gets false: it enables pg_cron from the dashboard instead)
select exists (select from pg_available_extensions where name = 'pg_cron')
       and pg_has_role('pg_read_all_settings', 'usage')
       and current_setting('shared_preload_libraries') ~ '(^|[ ,])pg_cron([ ,]|$)'
       and coalesce(current_setting('cron.database_name', true), 'postgres') = current_database()
       as ready;

-- pg_cron_version: the pg_cron extension in use, if any
select extversion from pg_extension where extname = 'pg_cron';

-- pgmq_install: which pgmq DB1 runs on
select source, version from intake.pgmq_install;

-- pgmq_in_use: the pgmq extension's version now (null where pgmq is not an extension), and what intake recorded when it installed pgmq
select (select extversion from pg_extension where extname = 'pgmq') as extension_version,
       r.source as recorded_source,
       r.version as recorded_version
  from (select) as one
  left join intake.pgmq_install as r on true;

-- record_pgmq_install: remember which pgmq DB1 runs on; the extension's live version replaces a stale record (ALTER EXTENSION pgmq UPDATE)
insert into intake.pgmq_install as r (source, version) values (%(source)s, %(version)s)
on conflict (singleton) do update
   set source = excluded.source, version = excluded.version, installed_at = now()
 where excluded.source = 'extension'
   and (r.source, r.version) is distinct from (excluded.source, excluded.version);

-- pool_configs: every provisioned pool's runtime settings
select pool_id, inventory, per_user_limit, paused, batch_size, visibility_timeout,
       validation_webhook_url, commit_rpc_name, max_retries, commit_rate_per_sec,
       webhook_rate_per_sec, retry_base_seconds, retry_max_seconds, opens_at, unit_seq::text as unit_seq
  from intake.engine_config
 order by pool_id;

-- insert_pool: provision a pool's runtime settings
insert into intake.engine_config (
    pool_id, inventory, per_user_limit, batch_size, visibility_timeout,
    validation_webhook_url, commit_rpc_name, max_retries, commit_rate_per_sec,
    webhook_rate_per_sec, retry_base_seconds, retry_max_seconds, opens_at, unit_seq)
values (
    %(pool_id)s, %(inventory)s, %(per_user_limit)s, %(batch_size)s, %(visibility_timeout)s,
    %(validation_webhook_url)s, %(commit_rpc_name)s, %(max_retries)s, %(commit_rate_per_sec)s,
    %(webhook_rate_per_sec)s, %(retry_base_seconds)s, %(retry_max_seconds)s, %(opens_at)s, %(unit_seq)s::regclass);

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
       webhook_rate_per_sec = %(webhook_rate_per_sec)s,
       retry_base_seconds = %(retry_base_seconds)s,
       retry_max_seconds = %(retry_max_seconds)s,
       opens_at = %(opens_at)s,
       updated_at = now()
 where pool_id = %(pool_id)s;

-- seeded_units: how many units a pool has been built with (logged: survives a crash)
select seeded_units from intake.engine_config where pool_id = %(pool_id)s;

-- inventory_ready: whether a pool's inventory is whole (the unlogged marker is there)
select exists (select from intake.inventory_ready where pool_id = %(pool_id)s) as ready;

-- inventory_lost: whether a pool's inventory was lost in a crash and must be rebuilt
select intake.inventory_lost(%(pool_id)s) as lost;

-- lost_pools: every pool whose inventory must be rebuilt
select c.pool_id from intake.engine_config c
 where intake.inventory_lost(c.pool_id) order by c.pool_id;

-- rebuild_inventory: build a pool's inventory from the durable facts, if it is missing
select * from intake.rebuild_inventory(%(pool_id)s, %(trigger)s);

-- inventory_plan: what a rebuild of the pool would build now
select * from intake.inventory_plan(%(pool_id)s);

-- last_rebuilds: each pool's latest rebuild after a loss (not its first build)
select distinct on (pool_id) *
  from intake.inventory_rebuilds where trigger <> 'seed'
 order by pool_id, rebuilt_at desc;

-- seed_units: add units lo..hi to a whole pool: listed ids, else derived ones
insert into intake.allocations (pool_id, unit_no, resource_id)
select c.pool_id, n, coalesce(u.resource_id, intake.derived_resource_id(c.unit_namespace, n))
  from intake.engine_config c
 cross join generate_series(%(lo)s::bigint, %(hi)s::bigint) as n
  left join intake.unit_ids u on u.pool_id = c.pool_id and u.unit_no = n
 where c.pool_id = %(pool_id)s
   and (c.inventory_source = 'count' or u.unit_no is not null);

-- record_seeded: remember, durably, how far a pool has been built
update intake.engine_config set seeded_units = greatest(seeded_units, %(units)s)
 where pool_id = %(pool_id)s;

-- listed_units: how many of a pool's units have an operator's id, and the highest number
select count(*) as listed, coalesce(max(unit_no), 0) as high
  from intake.unit_ids where pool_id = %(pool_id)s;

-- pool_source: where a pool's units come from (count | file)
select inventory_source from intake.engine_config where pool_id = %(pool_id)s;

-- mark_listed: the pool's units come from the operator's file
update intake.engine_config set inventory_source = 'file' where pool_id = %(pool_id)s;

-- listed_changes: listed ids that differ from the file now being loaded (temp table intake_ids)
select i.unit_no, u.resource_id::text as was, i.resource_id::text as now
  from intake_ids i
  join intake.unit_ids u on u.pool_id = %(pool_id)s and u.unit_no = i.unit_no
 where u.resource_id <> i.resource_id
 order by i.unit_no
 limit 5;

-- add_listed: the listed ids a pool does not have yet
insert into intake.unit_ids (pool_id, unit_no, resource_id)
select %(pool_id)s, i.unit_no, i.resource_id
  from intake_ids i
 where i.unit_no > %(high)s
 order by i.unit_no;

-- sequence_position: how far a pool's unit sequence has gone
select coalesce(pg_sequence_last_value(unit_seq), 0) as position
  from intake.engine_config where pool_id = %(pool_id)s;

-- close_numbering: the unit sequence of a pool that grew after it passed the old end, moved to the new end: the new units go on the release list, and a number must not reach them as well (a claim by number and one by release list meeting on a unit could deadlock)
select setval(unit_seq, greatest(coalesce(pg_sequence_last_value(unit_seq), 0), %(target)s))
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

-- claim_batch: one claim per user, in one statement, for a trusted backend (answers in input order; the columns in engine/claims.py Claim's order)
select outcome, pool_id, user_id, resource_id, unit_no, idempotency_key, msg_id
  from intake.claim_resources(%(pool_id)s, %(user_ids)s::text[]);

