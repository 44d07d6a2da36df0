-- The metrics collector's minute loop, for pg_cron before 1.5 (and DB1s
-- without pg_cron, where a later pg_cron 1.4 may call it). Installed by
-- `intake up` (and the Supabase render) only there: where pg_cron schedules
-- '5 seconds' it is dropped, so no procedure without a pinned search_path
-- stays behind for Supabase's linter to flag.

-- pg_cron before 1.5 schedules by the minute only. This procedure, started
-- by a minute job, collects at once and then on every `every_seconds`
-- boundary up to and including the next minute's first, committing each
-- row as it goes. pg_cron starts the next run up to a second late; that
-- run finds the minute's tick taken and waits for the following one, so the
-- cadence holds across the hand-over.
--
-- A procedure, not a function: only a procedure may COMMIT, and only without
-- a SET clause. pg_cron runs it as the superuser, so no name in it may
-- resolve through the caller's search_path (a role that can create in
-- `public` would plant public.to_timestamp(numeric), a better fit for a
-- numeric argument than the built-in): every function, type and operator is
-- qualified, and each of its transactions pins the search_path for itself
-- as well (set_config(…, true) ends with the transaction, so the caller's
-- session keeps its own).
create or replace procedure intake.collect_metrics_for_a_minute(every_seconds integer default 5)
language plpgsql
as $minute$
declare
    minute_ends pg_catalog.timestamptz;
    next_tick   pg_catalog.timestamptz;
begin
    perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    minute_ends := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp())
                   operator(pg_catalog.+) interval '1 minute';
    loop
        perform intake.collect_metrics(every_seconds operator(pg_catalog./) 2.0);
        commit;
        perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        next_tick := pg_catalog.to_timestamp((
            (pg_catalog.floor(extract(epoch from pg_catalog.clock_timestamp())
                              operator(pg_catalog./) every_seconds)
             operator(pg_catalog.+) 1)
            operator(pg_catalog.*) every_seconds)::pg_catalog.float8);
        exit when next_tick operator(pg_catalog.>) minute_ends;
        perform pg_catalog.pg_sleep(extract(
            epoch from next_tick operator(pg_catalog.-) pg_catalog.clock_timestamp()
        )::pg_catalog.float8);
    end loop;
end;
$minute$;

-- pg_cron's job calls it as the owner; nobody else needs it.
revoke all on procedure intake.collect_metrics_for_a_minute(integer) from public, anon, authenticated;
