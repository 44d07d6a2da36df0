-- wait_sample: what every backend of the benchmark's databases is doing now (one sample); an active backend with no wait event is on the CPU
select coalesce(a.wait_event_type, 'CPU') as wait_event_type,
       coalesce(a.wait_event, 'running') as wait_event,
       a.state
  from pg_catalog.pg_stat_activity a
 where a.datname = any(%(databases)s::text[])
   and a.pid <> pg_catalog.pg_backend_pid()
   and a.state in ('active', 'idle in transaction');
