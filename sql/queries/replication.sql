-- standbys: DB1's connected standbys, and how far each lags in bytes (null where this role may not see)
select application_name, state, sync_state,
       pg_wal_lsn_diff(here.lsn, flush_lsn)::bigint as flush_lag_bytes,
       pg_wal_lsn_diff(here.lsn, replay_lsn)::bigint as replay_lag_bytes
  from pg_stat_replication,
       lateral (select case when pg_is_in_recovery() then pg_last_wal_receive_lsn()
                            else pg_current_wal_lsn() end as lsn) here
 order by application_name, pid;

-- node: whether this node is a standby, and which standbys it waits for
select pg_is_in_recovery() as in_recovery,
       current_setting('synchronous_standby_names') as sync_names;

-- fence: DB1's WAL position now, and how many streaming standbys have not flushed up to it (hidden: standbys whose position this role may not read)
select here.lsn::text as lsn,
       count(r.pid) filter (where r.flush_lsn < here.lsn
                            and (%(mode)s = 'all' or r.sync_state in ('sync', 'quorum'))) as behind,
       count(r.pid) filter (where r.flush_lsn is null) as hidden
  from (select pg_current_wal_insert_lsn() as lsn) here
  left join pg_stat_replication r on r.state is distinct from 'backup'
                                 and r.state is distinct from 'startup'
 group by here.lsn;

-- behind: how many streaming standbys have not yet flushed DB1's WAL up to a point
select count(*) as behind
  from pg_stat_replication r
 where r.state is distinct from 'backup' and r.state is distinct from 'startup'
   and r.flush_lsn < %(lsn)s::pg_lsn
   and (%(mode)s = 'all' or r.sync_state in ('sync', 'quorum'));
