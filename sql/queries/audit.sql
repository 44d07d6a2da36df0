-- `intake audit`: DB2's sold rows against the intents DB1 knows.
--
-- DB2 is read once, read-only, as a COPY stream; the rows go straight into a
-- temporary table on DB1, where the comparison runs as SQL. Everything on DB1
-- runs in one transaction that is rolled back: the temporary tables live and
-- die in it (so a transaction-mode pooler can carry the audit) and DB1 is left
-- exactly as it was. Each finding answers, per pool, how many there are in
-- all (found) and the first `limit` of them, in a stable order.

-- sold_source: what DB2 has under the sold query's name, bound as parameters: a relation (table, view, materialized view, foreign or partitioned table) and/or a function callable with no arguments
select exists (
           select from pg_catalog.pg_class c
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %(schema)s and c.relname = %(name)s
              and c.relkind in ('r', 'v', 'm', 'f', 'p')
       ) as relation,
       exists (
           select from pg_catalog.pg_proc p
             join pg_catalog.pg_namespace n on n.oid = p.pronamespace
            where n.nspname = %(schema)s and p.proname = %(name)s
              and p.prokind = 'f' and p.pronargs = p.pronargdefaults
       ) as function;

-- example_ledger: whether DB2 holds intake's example ledger (its commit RPC, as ledger.example_installed judges it, and a public.tickets with the three columns the audit reads)
select exists (
           select from pg_catalog.pg_proc p
             join pg_catalog.pg_namespace n on n.oid = p.pronamespace
            where n.nspname = 'public' and p.proname = 'finalize_transaction'
       )
       and (select count(*) from pg_catalog.pg_attribute a
             where a.attrelid = pg_catalog.to_regclass('public.tickets')
               and a.attname in ('idempotency_key', 'resource_id', 'pool_id')
               and a.attnum > 0 and not a.attisdropped) = 3 as in_use;

-- read_only: first in DB2's read transaction: whatever the operator's function does, the audit writes nothing to DB2
set transaction read only;

-- read_timeout: DB2's statement timeout for the rest of the read transaction (SET LOCAL, so nothing leaks through a pooler)
select pg_catalog.set_config('statement_timeout', %(timeout_ms)s, true);

-- copy_sold: what DB2 sold in the audited pools, streamed as COPY text; keys and resource ids as lower-case text (a uuid's canonical form, whatever type the ledger keeps them in); {source} (the view, or the function's call) and {pools} are composed by psycopg.sql
copy (
    select s.pool_id::text,
           pg_catalog.lower(s.idempotency_key::text),
           pg_catalog.lower(s.resource_id::text)
      from {source} as s
     where s.pool_id::text = any({pools}::text[])
) to stdout;

-- started: DB1's clock before DB2 is read; a commit DB1 recorded later may be one DB2's read missed
select pg_catalog.clock_timestamp() as started;

-- create_sold: DB2's sold rows, kept on DB1 for the comparison
create temporary table audit_sold (
    pool_id text, idempotency_key text, resource_id text
) on commit drop;

-- load_sold: the rows copy_sold streams from DB2, as they come
copy pg_temp.audit_sold (pool_id, idempotency_key, resource_id) from stdin;

-- create_facts: every intent DB1 knows, beside DB2's rows
create temporary table audit_facts (
    pool_id text, idempotency_key text, resource_id text, state text, updated_at timestamptz
) on commit drop;

-- load_facts: the durable facts a rebuild uses (intake.inventory_facts: queue, archive, DLQ and its archive, intent_state) of the audited pools, read after DB2's rows so that every key DB2 had was claimed before this statement's snapshot
insert into pg_temp.audit_facts (pool_id, idempotency_key, resource_id, state, updated_at)
select p.pool_id, f.idempotency_key::text, f.resource_id::text, f.state, s.updated_at
  from pg_catalog.unnest(%(pools)s::text[]) as p(pool_id)
 cross join lateral intake.inventory_facts(p.pool_id) as f
  left join intake.intent_state s on s.idempotency_key = f.idempotency_key;

-- analyze: statistics for the planner, so the comparisons below hash-join instead of looping
analyze pg_temp.audit_sold, pg_temp.audit_facts;

-- totals: per audited pool, what DB1 knows and what DB2 sold; committed_late are DB1's commits recorded after `started` (DB2's read may predate them, so they are not held against DB2)
select p.pool_id,
       (select count(*) from pg_temp.audit_facts f where f.pool_id = p.pool_id) as db1_intents,
       (select count(*) from pg_temp.audit_facts f
         where f.pool_id = p.pool_id and f.state = 'committed') as db1_committed,
       (select count(*) from pg_temp.audit_facts f
         where f.pool_id = p.pool_id and f.state = 'committed'
           and f.updated_at >= %(started)s) as committed_late,
       (select count(*) from pg_temp.audit_sold s where s.pool_id = p.pool_id) as db2_rows,
       (select count(*) from (select distinct s.idempotency_key from pg_temp.audit_sold s
                               where s.pool_id = p.pool_id) as k) as db2_keys
  from pg_catalog.unnest(%(pools)s::text[]) as p(pool_id)
 order by p.pool_id;

-- sold_twice: units DB2 sold under two or more keys: one resource_id, several distinct idempotency keys
with crowded as (
    -- Hashing every row once, then sorting only the few units sold more than
    -- once: a distinct count over every unit sorts the whole table.
    select s.pool_id, s.resource_id
      from pg_temp.audit_sold s
     where s.resource_id is not null
     group by s.pool_id, s.resource_id
    having count(*) > 1
), twice as (
    select c.pool_id, c.resource_id,
           array_agg(distinct s.idempotency_key order by s.idempotency_key) as keys
      from crowded c
      join pg_temp.audit_sold s on s.pool_id = c.pool_id and s.resource_id = c.resource_id
     group by c.pool_id, c.resource_id
    having count(distinct s.idempotency_key) > 1
), ranked as (
    select t.*, count(*) over (partition by t.pool_id) as found,
           row_number() over (partition by t.pool_id order by t.resource_id) as n
      from twice t
)
select pool_id, found, resource_id, keys from ranked where n <= %(limit)s order by pool_id, n;

-- unknown_to_db1: keys DB2 sold that DB1 does not know at all (lost from DB1: an asynchronous failover, a restore from an older backup)
with lost as (
    select s.pool_id, s.idempotency_key, min(s.resource_id) as resource_id
      from pg_temp.audit_sold s
     where not exists (select from pg_temp.audit_facts f
                        where f.pool_id = s.pool_id and f.idempotency_key = s.idempotency_key)
     group by s.pool_id, s.idempotency_key
), ranked as (
    select l.*, count(*) over (partition by l.pool_id) as found,
           row_number() over (partition by l.pool_id order by l.idempotency_key) as n
      from lost l
)
select pool_id, found, idempotency_key, resource_id
  from ranked where n <= %(limit)s order by pool_id, n;

-- missing_from_db2: keys DB1 counts committed (before `started`) that DB2 does not have
with missing as (
    select f.pool_id, f.idempotency_key, f.resource_id
      from pg_temp.audit_facts f
     where f.state = 'committed'
       and f.updated_at < %(started)s
       and not exists (select from pg_temp.audit_sold s
                        where s.pool_id = f.pool_id and s.idempotency_key = f.idempotency_key)
), ranked as (
    select m.*, count(*) over (partition by m.pool_id) as found,
           row_number() over (partition by m.pool_id order by m.idempotency_key) as n
      from missing m
)
select pool_id, found, idempotency_key, resource_id
  from ranked where n <= %(limit)s order by pool_id, n;

-- resource_mismatch: keys both know whose resource_id in DB2 is not the one DB1 gave the intent
with differ as (
    select f.pool_id, f.idempotency_key, f.resource_id as db1_resource_id,
           min(s.resource_id) as db2_resource_id
      from pg_temp.audit_facts f
      join pg_temp.audit_sold s
        on s.pool_id = f.pool_id and s.idempotency_key = f.idempotency_key
     where s.resource_id is distinct from f.resource_id
     group by f.pool_id, f.idempotency_key, f.resource_id
), ranked as (
    select d.*, count(*) over (partition by d.pool_id) as found,
           row_number() over (partition by d.pool_id order by d.idempotency_key) as n
      from differ d
)
select pool_id, found, idempotency_key, db1_resource_id, db2_resource_id
  from ranked where n <= %(limit)s order by pool_id, n;

-- rejected_but_sold: keys DB2 sold that DB1 recorded as rejected, whose unit DB1 put back on sale
with rejected as (
    select distinct f.pool_id, f.idempotency_key, f.resource_id
      from pg_temp.audit_facts f
      join pg_temp.audit_sold s
        on s.pool_id = f.pool_id and s.idempotency_key = f.idempotency_key
     where f.state = 'rejected'
), ranked as (
    select r.*, count(*) over (partition by r.pool_id) as found,
           row_number() over (partition by r.pool_id order by r.idempotency_key) as n
      from rejected r
)
select pool_id, found, idempotency_key, resource_id
  from ranked where n <= %(limit)s order by pool_id, n;

-- repeated_keys: keys DB2 holds more than once (the ledger's idempotency did not hold)
with repeated as (
    select s.pool_id, s.idempotency_key, count(*) as sold_rows
      from pg_temp.audit_sold s
     group by s.pool_id, s.idempotency_key
    having count(*) > 1
), ranked as (
    select r.*, count(*) over (partition by r.pool_id) as found,
           row_number() over (partition by r.pool_id order by r.idempotency_key) as n
      from repeated r
)
select pool_id, found, idempotency_key, sold_rows
  from ranked where n <= %(limit)s order by pool_id, n;
