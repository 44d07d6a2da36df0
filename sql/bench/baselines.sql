-- The designs intake's claim is measured against, in a schema of their own
-- (`bench`) beside DB1's real one. Each keeps intake's durability split: the
-- inventory is UNLOGGED, the order or intent written with it is logged, so
-- every workload pays the same WAL flush at commit.

drop schema if exists bench cascade;
create schema bench;

-- (a) "hot row": one counter per pool, decremented by every buyer. Each
-- claim waits for the previous one to commit, fsync included.
create unlogged table bench.inventory (
    pool_id   text primary key,
    available bigint not null
);

create table bench.orders (
    order_id   bigint generated always as identity primary key,
    pool_id    text not null,
    user_id    text not null,
    ordered_at timestamptz not null default now()
);

-- (b) the literal design from the original pitch: find the first available
-- unit through a partial index with SKIP LOCKED. A claimed unit leaves a dead
-- entry at the head of that index until vacuum removes it, and every later
-- claim walks past it.
create unlogged table bench.units (
    pool_id     text not null,
    unit_no     bigint not null,
    resource_id uuid not null,
    status      text not null default 'available',
    locked_by   text,
    locked_at   timestamptz,
    primary key (pool_id, unit_no)
);

create index units_available on bench.units (pool_id, unit_no) where status = 'available';

-- Shaped like a pgmq queue table, so (b) enqueues what intake enqueues.
create table bench.intents (
    msg_id      bigint generated always as identity primary key,
    read_ct     integer not null default 0,
    enqueued_at timestamptz not null default now(),
    vt          timestamptz not null,
    message     jsonb
);

-- Every run starts from an empty sale: the previous run's rows, and the
-- dead tuples it left, must not tax the next one. `sale` names the tables
-- to seed ('hot_row', 'skip_locked'); for 'claim' only intake's own tables
-- are emptied here, and the caller seeds the pool the way `intake up` does.
create function bench.reset(sale text, units bigint)
returns void
language plpgsql
as $reset$
begin
    truncate bench.inventory, bench.orders, bench.units, bench.intents restart identity;
    truncate intake.allocations, intake.released_units, intake.inventory_ready, pgmq.q_intents;
    update intake.engine_config set seeded_units = 0;
    perform setval(c.unit_seq, 1, false) from intake.engine_config c;
    if sale = 'hot_row' then
        insert into bench.inventory (pool_id, available) values ('bench', units);
    elsif sale = 'skip_locked' then
        insert into bench.units (pool_id, unit_no, resource_id)
        select 'bench', n, gen_random_uuid() from generate_series(1, units) as n;
    end if;
end;
$reset$;
