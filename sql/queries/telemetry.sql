-- collect: one metrics row per pool, now
select intake.collect_metrics() as written;

-- pool_metrics: each pool's figures now (no inventory count: see telemetry.sql.j2)
select * from intake.pool_metrics();

-- latest: each pool's newest metrics row, with its age
select m.*, extract(epoch from clock_timestamp() - m.collected_at) as age_s
  from intake.engine_config c
  join lateral (
        select * from intake.engine_metrics e
         where e.pool_id = c.pool_id
         order by e.collected_at desc
         limit 1) m on true
 order by m.pool_id;

-- velocity_history: commits per second, all pools together, for the last rows
select collected_at, sum(processing_velocity) as velocity
  from intake.engine_metrics
 where collected_at > clock_timestamp() - make_interval(secs => %(seconds)s)
 group by collected_at
 order by collected_at;

-- cron_jobs: intake's pg_cron jobs, if pg_cron is there
select jobname, schedule, command, active
  from cron.job where jobname like 'intake-%%' order by jobname;

-- unschedule: remove one of intake's pg_cron jobs
select cron.unschedule(%(jobname)s);

-- register_worker: an `intake drain` announces itself
insert into intake.workers (worker_id, hostname, pid, pool_filter, concurrency)
values (%(worker_id)s, %(hostname)s, %(pid)s, %(pool_filter)s, %(concurrency)s);

-- heartbeat: a worker is alive, with its counters so far
update intake.workers
   set heartbeat_at = now(), batches = %(batches)s, committed = %(committed)s,
       rejected = %(rejected)s, retried = %(retried)s, dead_lettered = %(dead)s,
       log_lines_dropped = %(log_lines_dropped)s,
       stopped_at = case when %(stopped)s then now() end
 where worker_id = %(worker_id)s;

-- workers: the registered workers, newest first; stopped ones for a minute after they stop
select worker_id, hostname, pid, pool_filter, concurrency, started_at, batches, committed,
       rejected, retried, dead_lettered, log_lines_dropped,
       extract(epoch from clock_timestamp() - heartbeat_at) as heartbeat_age_s,
       stopped_at is not null as stopped
  from intake.workers
 where stopped_at is null or stopped_at > now() - interval '1 minute'
 order by started_at desc;

-- drop_minute_loop: the minute-loop collector, where pg_cron schedules seconds and nothing calls it
drop procedure if exists intake.collect_metrics_for_a_minute(integer);

-- newest: when the newest engine_metrics row was written, and how long ago (one index probe)
select max(collected_at) as collected_at,
       extract(epoch from clock_timestamp() - max(collected_at)) as age_s
  from intake.engine_metrics;

-- history: one pool's engine_metrics rows over the last seconds, oldest first
select collected_at, inventory, available_slots, locked, consumed, rejected, retried,
       dead_lettered, paused, recovering, queue_depth, in_flight, oldest_msg_age_s, dlq_depth,
       processing_velocity, webhook_calls, webhook_errors, webhook_error_rate
  from intake.engine_metrics
 where pool_id = %(pool_id)s
   and collected_at > clock_timestamp() - make_interval(secs => %(seconds)s)
 order by collected_at;

-- tidy: intake.keep_tidy, unless another worker is at it (a transaction-level try-lock: nobody waits)
select intake.keep_tidy() where pg_try_advisory_xact_lock(7411, 5);

-- webhook_governors: each pool's webhook governor as operators read it, with the seconds a Retry-After still holds calls and until the next probe (DB1's clock: no client's is trusted)
select g.*,
       greatest(0, coalesce(extract(epoch from g.retry_after_until - clock_timestamp()), 0))::float8
         as retry_after_s,
       -- greatest() skips a null: no probe due must stay null, not 0.
       case when g.probe_at is not null
            then greatest(0, extract(epoch from g.probe_at - clock_timestamp()))::float8
       end as probe_in_s
  from intake.webhook_governor_state() g;
