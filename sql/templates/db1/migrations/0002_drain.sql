-- 0002: what the drain worker needs: the intents' progress, retry settings,
-- and the shared commit-rate bucket.

-- An intent's state outside the queue message, which pgmq cannot update.
-- Logged: after a worker crash the next worker must know whether the
-- webhook already said yes. No row means "queued, never failed".
create table intake.intent_state (
    idempotency_key uuid primary key,
    pool_id         text not null,
    msg_id          bigint not null,
    state           text not null
                    check (state in ('queued', 'validated', 'committed', 'rejected', 'dead')),
    attempts        integer not null default 0,
    webhook_calls   integer not null default 0,
    last_error      text,
    updated_at      timestamptz not null default now()
);
create index intent_state_pool_state on intake.intent_state (pool_id, state);

alter table intake.engine_config
    add column retry_base_seconds double precision not null default 1.0
        check (retry_base_seconds > 0 and retry_base_seconds <= 3600),
    add column retry_max_seconds double precision not null default 60.0
        check (retry_max_seconds > 0 and retry_max_seconds <= 86400);

-- One token bucket per pool, shared by every worker on every machine, so
-- commit_rate_per_sec holds for the fleet, not per process. Touched once
-- per worker batch, never by claims.
create table intake.commit_buckets (
    pool_id      text primary key,
    tokens       double precision not null,
    refreshed_at timestamptz not null
);
