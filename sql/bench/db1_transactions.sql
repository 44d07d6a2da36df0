-- DB1's transactions so far (committed and rolled back), the statement count
-- the gateway bench reads around each run: pg_stat_statements is not
-- installed, and each of the gateway's statements is its own transaction.
-- Backends report these at most about once a second, so a count over a
-- run of several seconds is close, not exact.
select (xact_commit + xact_rollback)::bigint
  from pg_stat_database
 where datname = current_database();
