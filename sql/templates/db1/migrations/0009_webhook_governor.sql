-- 0009: the payment provider is metered too (issue 26).
--
-- engine_config.webhook_rate_per_sec: a fleet-wide ceiling on webhook calls,
-- like commit_rate_per_sec (0: none but what the provider itself asks for).
--
-- webhook_governors: one row per webhook URL, shared by every worker of the
-- fleet (pools that share a URL share its row): the call bucket, the rate
-- learned from the provider's 429s, a Retry-After in force, the outcomes of
-- the last two one-second windows, and the circuit breaker. UNLOGGED: all of
-- it describes the last few seconds, and a DB1 crash or a promotion that
-- empties it only makes the fleet find the provider's limit again.
alter table intake.engine_config add column if not exists webhook_rate_per_sec integer
    not null default 0 check (webhook_rate_per_sec >= 0);

create unlogged table if not exists intake.webhook_governors (
    webhook_url     text primary key,
    tokens          double precision not null default 0,
    refreshed_at    timestamptz not null default clock_timestamp(),
    -- Found by itself from 429s; null until the provider first refuses a call.
    learned_rate    double precision,
    -- When learned_rate last went down (at most once a second) or up.
    learned_at      timestamptz,
    -- No call before this instant (a Retry-After in force).
    paused_until    timestamptz,
    -- Outcomes reported in the current one-second window and the one before.
    window_start    timestamptz not null default clock_timestamp(),
    ok_now          integer not null default 0,
    throttled_now   integer not null default 0,
    failed_now      integer not null default 0,
    ok_prev         integer not null default 0,
    throttled_prev  integer not null default 0,
    failed_prev     integer not null default 0,
    -- closed: calls flow; open: only a probe every few seconds; after a
    -- probe succeeds the flow ramps up from ramp_started_at.
    breaker         text not null default 'closed' check (breaker in ('closed', 'open')),
    failures_in_row integer not null default 0,
    -- The first failure since the provider last answered, and that answer.
    failing_since   timestamptz,
    last_failure_at timestamptz,
    last_ok_at      timestamptz,
    opened_at       timestamptz,
    probe_at        timestamptz,
    ramp_started_at timestamptz,
    throttled_total bigint not null default 0,
    calls_total     bigint not null default 0
);

alter table intake.webhook_governors enable row level security;
