-- 0001: inventory, runtime configuration and the release list.

create type intake.unit_status as enum ('available', 'locked', 'consumed');

-- Runtime settings per pool. A normal (logged) table: it is the operator's
-- intent and must survive a restart; workers re-read it every batch.
create table intake.engine_config (
    pool_id                text primary key
                           check (pool_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    inventory              bigint  not null check (inventory > 0),
    per_user_limit         integer not null default 1 check (per_user_limit between 1 and 1000),
    paused                 boolean not null default false,
    batch_size             integer not null default 100 check (batch_size between 1 and 10000),
    visibility_timeout     integer not null default 45 check (visibility_timeout between 1 and 43200),
    validation_webhook_url text    not null check (validation_webhook_url ~ '^https?://'),
    commit_rpc_name        text    not null
                           check (commit_rpc_name ~ '^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$'),
    max_retries            integer not null default 10 check (max_retries between 0 and 1000),
    commit_rate_per_sec    integer not null default 0 check (commit_rate_per_sec >= 0),
    -- Hands out unit numbers 1..inventory, one per claim, so concurrent claims
    -- never contend for the same row (see claim_resource).
    unit_seq               regclass not null,
    created_at             timestamptz not null default now(),
    updated_at             timestamptz not null default now()
);

-- UNLOGGED: the herd's writes skip the WAL. The price is that a crash of the
-- DB1 server empties this table; the queue (logged) keeps every intent that
-- was claimed, which is what "nothing lost" rests on.
create unlogged table intake.allocations (
    pool_id         text not null,
    unit_no         bigint not null,
    resource_id     uuid not null,
    status          intake.unit_status not null default 'available',
    locked_by       text,
    locked_at       timestamptz,
    idempotency_key uuid,
    primary key (pool_id, unit_no)
);

-- The per-user check reads only this small index, never the inventory.
create index allocations_holder on intake.allocations (pool_id, locked_by)
    where locked_by is not null;

-- Units handed back (a declined payment, a claim that aborted after taking
-- its number). Claims take from here once the numbered range is used up.
create unlogged table intake.released_units (
    pool_id     text not null,
    unit_no     bigint not null,
    released_at timestamptz not null default now(),
    primary key (pool_id, unit_no)
);

create type intake.claim_result as (
    outcome         text,
    pool_id         text,
    user_id         text,
    resource_id     uuid,
    unit_no         bigint,
    idempotency_key uuid,
    msg_id          bigint
);
