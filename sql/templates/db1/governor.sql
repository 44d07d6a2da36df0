-- The webhook governor (0009): the fleet's calls to a payment provider, metered
-- in DB1 so that every worker obeys the same limits. Workers take calls
-- before making them (take_webhook_calls) and report what the provider
-- answered (report_webhook_calls); both lock the webhook's one row.
--
-- Policy, in one place:
--   * a Retry-After pauses every call until then;
--   * the first 429s teach a rate: 95 % of what the provider accepted over
--     the last second, held for 5 s, then rising 3 % a second until the
--     next 429 (at most one decrease a second; none from a second a pause
--     cut short);
--   * webhook_rate_per_sec, when set, is a ceiling on top;
--   * failures (connection errors, timeouts, 5xx) with no answer between
--     them for 2 s (5 at least), or 200 of them, open the breaker: one probe
--     call every 2 s;
--     the first answered probe closes it and the flow ramps up from 5 calls
--     a second, doubling each second. Two seconds, not a count alone: one
--     batch of intents that fail for their own reasons must not look like
--     an outage while the provider answers the others.

-- The calls per second in force for one webhook, or null for no limit.
create or replace function intake.governed_rate(
    configured integer, learned_rate double precision, learned_at timestamptz,
    ramp_started_at timestamptz, at timestamptz)
returns double precision
language sql
immutable
set search_path = pg_catalog, pg_temp
as $rate$
    select nullif(least(
        case when configured > 0 then configured::double precision end,
        learned_rate * power(1.03, greatest(0, extract(epoch from at - learned_at) - 5)),
        case when ramp_started_at is not null
             then 5 * power(2, least(40, extract(epoch from at - ramp_started_at))) end,
        'infinity'::double precision), 'infinity'::double precision);
$rate$;

-- Up to `wanted` calls to the pool's webhook, now. `wait_s`: when none is
-- granted, how long until one may be; `probe`: the one call the open
-- breaker lets through to see whether the provider is back.
create or replace function intake.take_webhook_calls(pool_id text, wanted integer)
returns table (granted integer, wait_s double precision, probe boolean)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $take$
declare
    url        text;
    configured integer;
    g          intake.webhook_governors;
    now_ts     timestamptz;
    rate       double precision;
    available  double precision;
    given      integer;
begin
    select c.validation_webhook_url, c.webhook_rate_per_sec into url, configured
      from intake.engine_config c where c.pool_id = take_webhook_calls.pool_id;
    if not found then
        return query select wanted, 0::double precision, false;
        return;
    end if;
    insert into intake.webhook_governors (webhook_url) values (url) on conflict do nothing;
    select * into g from intake.webhook_governors w where w.webhook_url = url for update;
    -- Read the clock once the row is ours (see take_commit_tokens).
    now_ts := greatest(clock_timestamp(), g.refreshed_at);
    if g.paused_until > now_ts then
        return query select 0, extract(epoch from g.paused_until - now_ts)::double precision, false;
        return;
    end if;
    if g.breaker = 'open' then
        if g.probe_at <= now_ts then
            update intake.webhook_governors w
               set probe_at = now_ts + interval '2 seconds'
             where w.webhook_url = url;
            return query select 1, 0::double precision, true;
        else
            return query
            select 0, extract(epoch from g.probe_at - now_ts)::double precision, false;
        end if;
        return;
    end if;
    rate := intake.governed_rate(configured, g.learned_rate, g.learned_at,
                                 g.ramp_started_at, now_ts);
    if rate is null then
        return query select wanted, 0::double precision, false;
        return;
    end if;
    -- A fifth of a second of calls at most, so a fleet's first second stays
    -- near the rate (as the commit bucket does).
    available := least(greatest(rate * 0.2, 1),
                       g.tokens + rate * extract(epoch from now_ts - g.refreshed_at));
    given := least(wanted, floor(available)::integer);
    update intake.webhook_governors w
       set tokens = available - given,
           refreshed_at = now_ts,
           -- A ramp that has outgrown every other limit is over.
           ramp_started_at = case when now_ts - w.ramp_started_at > interval '30 seconds'
                                  then null else w.ramp_started_at end
     where w.webhook_url = url;
    return query
    select given, case when given > 0 then 0 else (1 - available) / rate end, false;
end;
$take$;

-- What the provider answered a worker's calls: `ok` answered (approved or
-- declined), `throttled` refused for now (429, or 503 with Retry-After),
-- `failed` not answered (connection error, timeout, other 5xx). Returns the
-- breaker's state after the report and whether this report changed it, so
-- the worker that saw the change says so; and `answering`: whether the
-- provider answered any call of the fleet since the last failure reported
-- (or these failures begin a new run). A failure then is the intent's own
-- (charged an attempt); one while it has answered nobody since the last
-- failure is the provider's outage (not charged), however fast the retries.
drop function if exists intake.report_webhook_calls(text, integer, integer, integer,
                                                   double precision);
create or replace function intake.report_webhook_calls(
    pool_id text, ok integer, throttled integer, failed integer,
    retry_after_s double precision, own_ok_per_s double precision default 0)
returns table (breaker text, changed boolean, learned_rate double precision,
               paused_until timestamptz, answering boolean)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $report$
declare
    url        text;
    configured integer;
    g          intake.webhook_governors;
    now_ts     timestamptz;
    elapsed    double precision;
    accepted   double precision;
    rate       double precision;
    was        text;
    answered   boolean;
    paused_lately boolean;
begin
    select c.validation_webhook_url, c.webhook_rate_per_sec into url, configured
      from intake.engine_config c where c.pool_id = report_webhook_calls.pool_id;
    if not found then
        return;
    end if;
    insert into intake.webhook_governors (webhook_url) values (url) on conflict do nothing;
    select * into g from intake.webhook_governors w where w.webhook_url = url for update;
    now_ts := greatest(clock_timestamp(), g.window_start);
    was := g.breaker;

    -- The one-second windows: the current one becomes the previous one.
    elapsed := extract(epoch from now_ts - g.window_start);
    if elapsed >= 1 then
        if elapsed < 2 then
            g.ok_prev := g.ok_now;
            g.throttled_prev := g.throttled_now;
            g.failed_prev := g.failed_now;
        else
            g.ok_prev := 0;
            g.throttled_prev := 0;
            g.failed_prev := 0;
        end if;
        g.ok_now := 0;
        g.throttled_now := 0;
        g.failed_now := 0;
        g.window_start := g.window_start + make_interval(secs => floor(elapsed));
        elapsed := extract(epoch from now_ts - g.window_start);
    end if;
    g.ok_now := g.ok_now + ok;
    g.throttled_now := g.throttled_now + throttled;
    g.failed_now := g.failed_now + failed;
    g.calls_total := g.calls_total + ok + throttled + failed;
    g.throttled_total := g.throttled_total + throttled;

    if throttled > 0 then
        -- A pause in the last second leaves its windows short of answers:
        -- no estimate from them (the pause itself is the slowdown).
        paused_lately := g.paused_until > now_ts - interval '1 second';
        if retry_after_s is not null then
            g.paused_until := greatest(g.paused_until,
                                       now_ts + make_interval(secs => least(retry_after_s, 3600)));
        end if;
        if (g.learned_at is null or now_ts - g.learned_at >= interval '1 second')
           and not coalesce(paused_lately, false) then
            -- What the provider accepted over the last second: its limit, as
            -- near as the fleet can tell.
            accepted := g.ok_prev * (1 - least(elapsed, 1)) + g.ok_now;
            if g.learned_rate is null then
                -- The first 429: until now no worker reported its answers
                -- (an unmetered webhook costs no statement), so the windows
                -- are nearly empty. The reporter's own answer rate, times
                -- the workers alive, is the fleet's.
                accepted := greatest(accepted, own_ok_per_s * (
                    select greatest(1, count(*)) from intake.workers w
                     where w.stopped_at is null
                       and w.heartbeat_at > now_ts - interval '15 seconds'));
            end if;
            rate := intake.governed_rate(configured, g.learned_rate, g.learned_at,
                                         g.ramp_started_at, now_ts);
            g.learned_rate := greatest(1, accepted * 0.95);
            g.learned_at := now_ts;
            g.tokens := least(g.tokens, 0);
        end if;
    end if;

    -- Did the provider answer anybody since the last failure reported, or do
    -- these failures begin a new run? Then they are the intents' own.
    answered := ok > 0
                or g.failing_since is null
                or now_ts - g.last_failure_at > interval '2 seconds'
                or g.last_ok_at > g.last_failure_at;
    if ok > 0 then
        g.failures_in_row := 0;
        g.failing_since := null;
        g.last_ok_at := now_ts;
        if g.breaker = 'open' then
            g.breaker := 'closed';
            g.ramp_started_at := now_ts;
            g.tokens := 0;
        end if;
    elsif failed > 0 then
        -- Failures more than 2 s apart are separate runs, not one outage.
        if g.failing_since is null or now_ts - g.last_failure_at > interval '2 seconds' then
            g.failing_since := now_ts;
            g.failures_in_row := 0;
        end if;
        g.failures_in_row := g.failures_in_row + failed;
        g.last_failure_at := now_ts;
        if g.breaker = 'closed' and g.failures_in_row >= 5
           and (now_ts - g.failing_since >= interval '2 seconds' or g.failures_in_row >= 200) then
            g.breaker := 'open';
            g.opened_at := now_ts;
            g.probe_at := now_ts + interval '2 seconds';
        end if;
    end if;

    update intake.webhook_governors w
       set learned_rate = g.learned_rate, learned_at = g.learned_at,
           paused_until = g.paused_until, tokens = g.tokens,
           window_start = g.window_start,
           ok_now = g.ok_now, throttled_now = g.throttled_now, failed_now = g.failed_now,
           ok_prev = g.ok_prev, throttled_prev = g.throttled_prev, failed_prev = g.failed_prev,
           breaker = g.breaker, failures_in_row = g.failures_in_row,
           failing_since = g.failing_since, last_ok_at = g.last_ok_at,
           last_failure_at = g.last_failure_at,
           opened_at = g.opened_at, probe_at = g.probe_at, ramp_started_at = g.ramp_started_at,
           calls_total = g.calls_total, throttled_total = g.throttled_total
     where w.webhook_url = url;
    return query
    select g.breaker, g.breaker <> was, g.learned_rate, g.paused_until, answered;
end;
$report$;

-- Each pool's webhook governor as an operator reads it (status, watch, the
-- dashboard, /metrics): the rate in force, what was learned, a Retry-After
-- in force, the breaker, and the share of 429s over the last full second.
create or replace function intake.webhook_governor_state()
returns table (pool_id text, configured_rate integer, governed_rate double precision,
               learned_rate double precision, retry_after_until timestamptz,
               breaker text, probe_at timestamptz, opened_at timestamptz,
               throttled_share double precision, calls_total bigint, throttled_total bigint)
language sql
stable
set search_path = pg_catalog, pg_temp
as $state$
    select c.pool_id, c.webhook_rate_per_sec,
           case when g.breaker = 'open' then 0
                else intake.governed_rate(c.webhook_rate_per_sec, g.learned_rate, g.learned_at,
                                          g.ramp_started_at, clock_timestamp()) end,
           g.learned_rate,
           case when g.paused_until > clock_timestamp() then g.paused_until end,
           coalesce(g.breaker, 'closed'),
           case when g.breaker = 'open' then g.probe_at end,
           case when g.breaker = 'open' then g.opened_at end,
           case when g.ok_prev + g.throttled_prev + g.failed_prev > 0
                then g.throttled_prev::double precision
                     / (g.ok_prev + g.throttled_prev + g.failed_prev) end,
           coalesce(g.calls_total, 0), coalesce(g.throttled_total, 0)
      from intake.engine_config c
      left join intake.webhook_governors g on g.webhook_url = c.validation_webhook_url
     order by c.pool_id;
$state$;
