-- 0004: what DB1 needs to survive its own crash.
--
-- Crash recovery empties every UNLOGGED table (allocations, released_units)
-- and resets unlogged sequences (the pools' unit numbers). What survives is
-- logged: the queue and its archive, the DLQ and its archive, intent_state,
-- engine_config. These additions let DB1 notice the loss and rebuild the
-- inventory exactly from what survived (see intake.rebuild_inventory).

-- Every unit's identity must be the same after a rebuild as before it.
-- Counted pools derive each unit's resource_id from this per-pool namespace
-- and the unit number (md5 of both), so claims pay nothing for it and a new
-- event with the same pool id still gets new ids. Pools listed from a file
-- keep their ids in intake.unit_ids.
alter table intake.engine_config
    add column unit_namespace uuid not null default gen_random_uuid(),
    -- How many units have been built so far. Logged: after a crash it tells
    -- a pool that lost its inventory from one never seeded, and it is what
    -- `intake up` refuses to shrink below.
    add column seeded_units bigint not null default 0 check (seeded_units >= 0),
    add column inventory_source text not null default 'count'
        check (inventory_source in ('count', 'file'));

-- Operators' own unit ids (pools[].inventory_file), and the random ids of
-- units seeded before 0004. Logged, written once at seeding; claims never
-- read it.
create table intake.unit_ids (
    pool_id     text   not null,
    unit_no     bigint not null check (unit_no > 0),
    resource_id uuid   not null,
    primary key (pool_id, unit_no)
);
create unique index unit_ids_resource on intake.unit_ids (pool_id, resource_id);

-- One row per pool whose volatile state is whole. UNLOGGED on purpose: crash
-- recovery empties it together with the inventory, and that emptiness is how
-- claims, workers and the maintenance job learn that the inventory is gone.
create unlogged table intake.inventory_ready (
    pool_id  text primary key,
    ready_at timestamptz not null default now()
);

-- What each rebuild found and did: the operator's record of a crash.
create table intake.inventory_rebuilds (
    id          bigint generated always as identity primary key,
    pool_id     text not null,
    rebuilt_at  timestamptz not null default now(),
    trigger     text not null,
    units       bigint not null,
    locked      bigint not null,
    consumed    bigint not null,
    released    bigint not null,
    high_water  bigint not null,
    intents     bigint not null,
    conflicts   bigint not null,
    seconds     double precision not null
);
create index inventory_rebuilds_pool on intake.inventory_rebuilds (pool_id, rebuilt_at);

-- A DB1 provisioned before 0004 keeps the ids its units already have, and
-- its pools count as seeded and whole (if their units are there now).
insert into intake.unit_ids (pool_id, unit_no, resource_id)
select a.pool_id, a.unit_no, a.resource_id from intake.allocations a;
update intake.engine_config c
   set seeded_units = s.units
  from (select a.pool_id, max(a.unit_no) as units
          from intake.allocations a group by a.pool_id) as s
 where s.pool_id = c.pool_id;
insert into intake.inventory_ready (pool_id)
select distinct a.pool_id from intake.allocations a;

-- The engine's metrics say when a pool is being rebuilt. pool_metrics()
-- gains that column; a function's result type cannot be replaced in place.
alter table intake.engine_metrics add column recovering boolean not null default false;
drop function if exists intake.pool_metrics();
