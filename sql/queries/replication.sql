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
