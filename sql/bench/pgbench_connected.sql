-- How many pgbench sessions are connected to this database.
select count(*) from pg_stat_activity
 where datname = current_database() and application_name = 'pgbench';
