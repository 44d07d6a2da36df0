-- wait_sample: what every backend of the benchmark's databases is doing now (one sample); an active backend with no wait event is on the CPU
select coalesce(a.wait_event_type, 'CPU') as wait_event_type,
       coalesce(a.wait_event, 'running') as wait_event,
       a.state
  from pg_catalog.pg_stat_activity a
 where a.datname = any(%(databases)s::text[])
   and a.pid <> pg_catalog.pg_backend_pid()
   and a.state in ('active', 'idle in transaction');

-- committed_so_far: intents the drain has finished as committed (running totals plus deltas not yet folded): cheap to poll, unlike counting the archive
select consumed from intake.pool_metrics() where pool_id = %(pool_id)s;

-- archived: messages in the queue's archive (counted once, at the end)
select count(*) from pgmq.a_intents;
