-- 0003: telemetry: the drain's outcome counts, the metrics history, and the
-- registry of running workers.

-- Every worker batch appends what it did here. Appending, never updating a
-- shared row, keeps concurrent workers from queueing behind one counter;
-- the collector folds these rows into pool_totals every few seconds.
create table intake.outcome_deltas (
    id             bigint generated always as identity primary key,
    pool_id        text   not null,
    committed      bigint not null default 0,
    rejected       bigint not null default 0,
    retried        bigint not null default 0,
    dead_lettered  bigint not null default 0,
    webhook_calls  bigint not null default 0,
    webhook_errors bigint not null default 0
);

-- Running totals per pool, written only by the collector.
create table intake.pool_totals (
    pool_id        text primary key,
    committed      bigint not null default 0,
    rejected       bigint not null default 0,
    retried        bigint not null default 0,
    dead_lettered  bigint not null default 0,
    webhook_calls  bigint not null default 0,
    webhook_errors bigint not null default 0,
    updated_at     timestamptz not null default now()
);

-- One row per pool per collection (every 5 s). The queue columns describe
-- the intent queue and the DLQ, which every pool shares.
create table intake.engine_metrics (
    collected_at        timestamptz not null,
    pool_id             text        not null,
    inventory           bigint      not null,
    available_slots     bigint      not null,
    locked              bigint      not null,
    consumed            bigint      not null,
    rejected            bigint      not null,
    retried             bigint      not null,
    dead_lettered       bigint      not null,
    paused              boolean     not null,
    queue_depth         bigint      not null,
    in_flight           bigint      not null,
    oldest_msg_age_s    integer,
    dlq_depth           bigint      not null,
    -- commits per second since the pool's previous row
    processing_velocity double precision not null,
    webhook_calls       bigint      not null,
    webhook_errors      bigint      not null,
    -- failed webhook calls over all calls since the previous row; null: no calls
    webhook_error_rate  double precision,
    collect_ms          double precision not null,
    primary key (pool_id, collected_at)
);
create index engine_metrics_collected_at on intake.engine_metrics (collected_at);

-- Each running `intake drain` registers here and heartbeats every few
-- seconds, so `intake watch` can tell a busy worker from a silent one.
create table intake.workers (
    worker_id         text primary key,
    hostname          text    not null,
    pid               integer not null,
    pool_filter       text,
    concurrency       integer not null,
    started_at        timestamptz not null default now(),
    heartbeat_at      timestamptz not null default now(),
    stopped_at        timestamptz,
    batches           bigint not null default 0,
    committed         bigint not null default 0,
    rejected          bigint not null default 0,
    retried           bigint not null default 0,
    dead_lettered     bigint not null default 0,
    log_lines_dropped bigint not null default 0
);
