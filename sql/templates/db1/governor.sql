-- The webhook governor (0009, 0010): the fleet's calls to a payment provider, metered
-- in DB1 so that every worker obeys the same limits. Workers take calls
-- before making them (take_webhook_calls) and report what the provider
-- answered (report_webhook_calls); both lock the webhook's one row.
--
-- Policy, in one place:
--   * a Retry-After pauses every call until then;
--   * the first 429 starts a ramp: from a quarter of a first guess (20
--     calls a second at least; a burst across a provider's window edge can
--     read twice its limit), doubling each second, until the next 429;
--   * every later 429 (at most one a second) teaches a rate. When the rate
--     in force held steady (under 10 % higher than 1-2 s ago) and calls went
--     through at it for 2 s since the last pause or lesson, the windows read
--     the limit: 97 % of the rate in force as they began, when the
--     provider accepted 90 % of it or more, else of what it accepted (half
--     the rate refused at least), held 60 s when the provider sends Retry-After (each of its 429s
--     pauses the fleet), 3 s when it does not (a 429 costs one call).
--     Otherwise (a ramp doubling, calls just restarted after a pause) they
--     read a mix of slower seconds and a window's edge: 95 % of the
--     reading, between half and 70 % of the rate refused, held
--     for no time; a rate read steady and still in its hold goes down 3 %;
--   * after the hold the rate rises as a cube (+4 % 5 s later, +30 % after
--     10 s, doubled after 15 s): it crosses the limit slowly, so the next
--     429 is read steady, and climbs quickly when the limit itself rose,
--     but never above 5 % more than the fleet called a second lately;
--   * the bucket holds a fiftieth of a second of calls, so that no
--     provider's one-second window gets more than the rate and a little;
--   * webhook_rate_per_sec, when set, is a ceiling on top;
--   * failures (connection errors, timeouts, 5xx) with no answer between
--     them for 2 s (5 at least), or 200 of them, open the breaker: one probe
--     call every 2 s;
--     the first answered probe closes it and the flow ramps up from 5 calls
--     a second, doubling each second. Two seconds, not a count alone: one
--     batch of intents that fail for their own reasons must not look like
--     an outage while the provider answers the others.

-- The calls a second the fleet made over the governor's windows (what its
-- workers reported), or 0 when nobody reported for 3 s.
create or replace function intake.fleet_calls_per_s(g intake.webhook_governors, at timestamptz)
returns double precision
language sql
immutable
set search_path = pg_catalog, pg_temp
as $used$
    select case when at - g.window_start < interval '3 seconds'
                then (g.ok_prev + g.throttled_prev + g.failed_prev
                      + g.ok_now + g.throttled_now + g.failed_now)::double precision
                     / (1 + greatest(0, extract(epoch from at - g.window_start)))
                else 0 end;
$used$;

-- The calls per second in force for one webhook, or null for no limit.
-- `used_per_s`: what the fleet called a second lately (null: unknown). A
-- learned rate rises above it by 5 % at most: a fleet that cannot use its
-- rate (its workers short of CPU, an empty queue) learns nothing about the
-- provider, and a rate grown unused would meet the provider all at once
-- when the calls come back. A ramp doubles to twice it at most, for the
-- same reason: a fleet short of CPU once let a ramp run ten seconds
-- unrefused, to ~33,000 a second, and the 429 that came when the calls
-- did taught half of that (16,669 a second against a limit of 200).
drop function if exists intake.governed_rate(integer, double precision, timestamptz,
                                             timestamptz, timestamptz);
drop function if exists intake.governed_rate(integer, double precision, timestamptz,
                                             timestamptz, double precision, double precision,
                                             timestamptz);
create or replace function intake.governed_rate(
    configured integer, learned_rate double precision, learned_at timestamptz,
    ramp_started_at timestamptz, ramp_from double precision, hold_s double precision,
    at timestamptz, used_per_s double precision default null)
returns double precision
language sql
immutable
set search_path = pg_catalog, pg_temp
as $rate$
    select nullif(least(
        case when configured > 0 then configured::double precision end,
        case when learned_rate is not null
             then least(learned_rate * (1 + power(greatest(0,
                            extract(epoch from at - learned_at) - hold_s) / 15, 3)),
                        greatest(learned_rate, coalesce(1.05 * used_per_s, 'infinity'))) end,
        case when ramp_started_at is not null
             then least(ramp_from * power(2, least(40, greatest(0,
                            extract(epoch from at - ramp_started_at)))),
                        greatest(ramp_from, coalesce(2 * used_per_s, 'infinity'))) end,
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
                                 g.ramp_started_at, g.ramp_from,
                                 g.learned_hold_s, now_ts,
                                 intake.fleet_calls_per_s(g, now_ts));
    if rate is null then
        return query select wanted, 0::double precision, false;
        return;
    end if;
    -- A fiftieth of a second of calls at most: a provider that counts its
    -- calls in fixed one-second windows refuses any window that gets more
    -- than its limit, and a window can get a second of the bucket's calls
    -- plus its burst (a fifth of a second of burst took the learned rate
    -- down to 85 % of the limit).
    available := least(greatest(rate * 0.02, 1),
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
-- provider answered any call of the fleet in the last second or since the
-- last failure reported (or these failures begin a new run, or their calls
-- were made before the run's first failure was reported: in flight with it,
-- they are judged as it was). A failure then is the intent's own (charged
-- an attempt); one while it has answered nobody for a second and nobody
-- since the last failure is the provider's outage (not charged), however
-- fast the retries: a retry comes a second or more after its failure.
-- asked_s_ago: how long ago the reporter made these calls, by its own clock
-- (a worker's clock need not agree with DB1's; an interval does).
drop function if exists intake.report_webhook_calls(text, integer, integer, integer,
                                                   double precision);
drop function if exists intake.report_webhook_calls(text, integer, integer, integer,
                                                   double precision, double precision);
create or replace function intake.report_webhook_calls(
    pool_id text, ok integer, throttled integer, failed integer,
    retry_after_s double precision, own_ok_per_s double precision default 0,
    asked_s_ago double precision default 0)
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
    span       double precision;
    rate       double precision;
    was        text;
    answered   boolean;
    rate_then  double precision;
    reading    double precision;
    used       double precision;
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
        if g.learned_at is null or now_ts - g.learned_at >= interval '1 second' then
            used := intake.fleet_calls_per_s(g, now_ts);
            rate := intake.governed_rate(configured, g.learned_rate, g.learned_at,
                                         g.ramp_started_at, g.ramp_from,
                                         g.learned_hold_s, now_ts, used);
            -- The seconds the windows span, less the pause in force in them.
            -- (least and greatest skip nulls: no pause yet, no overlap.)
            span := 1 + least(elapsed, 1);
            if g.paused_at is not null then
                span := span - greatest(0, extract(epoch from
                            least(g.paused_until, now_ts)
                            - greatest(g.paused_at, g.window_start - interval '1 second')));
            end if;
            if g.learned_rate is null and g.ramp_started_at is null then
                -- The first 429: until now no worker reported its answers
                -- (an unmetered webhook costs no statement), so the windows
                -- are empty unless something else governed the webhook. The
                -- windows or the reporter's own answer rate, times the
                -- workers alive, are a first guess, no more (0 when all of
                -- this worker's calls came after the window filled, twice
                -- the limit when a burst straddled a window's edge): the
                -- fleet ramps up from a quarter of it, 20 at least, doubling
                -- each second, until the next 429, which the windows,
                -- reported from now on, can read.
                g.ramp_from := greatest(20, 0.25 * greatest(
                    (g.ok_prev + g.ok_now) / greatest(span, 0.5),
                    own_ok_per_s * (
                        select greatest(1, count(*)) from intake.workers w
                         where w.stopped_at is null
                           and w.heartbeat_at > now_ts - interval '15 seconds')));
                -- From the end of the pause this 429 brings, if any.
                g.ramp_started_at := now_ts + case when retry_after_s is null then interval '0'
                    else make_interval(secs => least(retry_after_s, 3600)) end;
            elsif rate is not null then
                -- The windows read what the provider accepts only when the
                -- rate in force held steady over them: then a fixed-window
                -- provider's windows, however they fall across ours, accept
                -- its limit a second and no more. While the rate climbs fast
                -- (a ramp doubling, the cube's far end) or restarts after a
                -- pause, they read a mix of the slower rate before and a
                -- window's edge (up to twice the limit).
                rate_then := intake.governed_rate(
                    configured, g.learned_rate, g.learned_at, g.ramp_started_at,
                    g.ramp_from, g.learned_hold_s,
                    now_ts - make_interval(secs => greatest(span, 0)), used);
                reading := (g.ok_prev + g.ok_now) / greatest(span, 0.5);
                if span >= 1 and rate_then >= 0.9 * rate
                   and now_ts - greatest(g.paused_until, g.learned_at) >= interval '2 seconds' then
                    -- Steady, and calls went through at it for two seconds:
                    -- the rate crossed the limit within the windows. 97 % of
                    -- the rate in force as they began, when the provider
                    -- accepted 90 % of it or more (the windows read what the
                    -- fleet's calls reached, a little under the rate, and
                    -- learning from them settled 5 % under the limit; 97 %
                    -- of the rate refused was refused again within
                    -- seconds); else 97 % of what it accepted; never below
                    -- half the rate refused (idle workers leave the windows
                    -- empty). Held 60 s with Retry-After: each crossing of
                    -- the limit costs the fleet a pause.
                    g.learned_rate := greatest(1, 0.5 * rate,
                                               0.97 * case when reading >= 0.9 * rate_then
                                                           then rate_then else reading end);
                    g.learned_hold_s := case when retry_after_s is not null then 60 else 3 end;
                elsif g.learned_rate is not null and g.learned_hold_s > 0
                      and now_ts - g.learned_at
                          < make_interval(secs => g.learned_hold_s) then
                    -- A rate read steady, still in its hold, refused as calls
                    -- restart after a pause (calls held back meet a window's
                    -- edge): 3 % down, held as long again.
                    g.learned_rate := 0.97 * g.learned_rate;
                else
                    -- Not steady: the reading, but no more than 70 % of the
                    -- rate refused (which the report's delay lets a ramp
                    -- overshoot the limit by a third or more; at 75 % the
                    -- rate learned was refused again as the pause ended) nor
                    -- below half of it; and no hold: the cube rises at once,
                    -- slowly past the limit, so the next 429 is read steady.
                    g.learned_rate := greatest(1, 0.5 * rate,
                                               least(0.95 * reading, 0.7 * rate));
                    g.learned_hold_s := 0;
                end if;
                g.ramp_started_at := null;
            end if;
            g.learned_at := now_ts;
            g.tokens := least(g.tokens, 0);
        end if;
        if retry_after_s is not null then
            if not coalesce(g.paused_until > now_ts, false) then
                g.paused_at := now_ts;
            end if;
            g.paused_until := greatest(g.paused_until,
                                       now_ts + make_interval(secs => least(retry_after_s, 3600)));
        end if;
    end if;

    -- Did the provider answer anybody in the last second or since the last
    -- failure reported, or do these failures begin a new run? Then they are
    -- the intents' own. So are failures of calls made before the run's first
    -- failure was reported. One wave of retries read by two batches reports
    -- twice, the second a moment after the first, in flight with it or just
    -- behind it: neither must take the other for an answerless past.
    answered := ok > 0
                or g.failing_since is null
                or now_ts - g.last_failure_at > interval '2 seconds'
                or g.last_ok_at > g.last_failure_at
                or g.last_ok_at > now_ts - interval '1 second'
                or g.failing_since > now_ts - make_interval(secs => greatest(asked_s_ago, 0));
    if ok > 0 then
        g.failures_in_row := 0;
        g.failing_since := null;
        g.last_ok_at := now_ts;
        if g.breaker = 'open' then
            g.breaker := 'closed';
            g.ramp_started_at := now_ts;
            g.ramp_from := 5;
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
           learned_hold_s = g.learned_hold_s,
           paused_until = g.paused_until, paused_at = g.paused_at, tokens = g.tokens,
           window_start = g.window_start,
           ok_now = g.ok_now, throttled_now = g.throttled_now, failed_now = g.failed_now,
           ok_prev = g.ok_prev, throttled_prev = g.throttled_prev, failed_prev = g.failed_prev,
           breaker = g.breaker, failures_in_row = g.failures_in_row,
           failing_since = g.failing_since, last_ok_at = g.last_ok_at,
           last_failure_at = g.last_failure_at,
           opened_at = g.opened_at, probe_at = g.probe_at, ramp_started_at = g.ramp_started_at, ramp_from = g.ramp_from,
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
                                          g.ramp_started_at, g.ramp_from,
                                          g.learned_hold_s, clock_timestamp(),
                                          intake.fleet_calls_per_s(g, clock_timestamp())) end,
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
