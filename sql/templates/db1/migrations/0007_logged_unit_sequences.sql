-- 0007: unit sequences that a promoted standby can read.
--
-- PostgreSQL 15 gives a streaming standby no initial state for an UNLOGGED
-- sequence created while it streams: once the standby is promoted (DB1's
-- host lost), reading the sequence fails with "bad magic number", and the
-- pool can never be rebuilt. A logged sequence costs a WAL record per 32
-- numbers (the claim already writes its intent). Its value after a crash or
-- a promotion does not matter: the rebuild sets it from the durable facts.
-- A sequence that cannot be read already is replaced by a new one.
do $logged$
declare
    pool record;
begin
    for pool in
        select c.pool_id, c.unit_seq, s.relname, s.relpersistence
          from intake.engine_config c
          join pg_catalog.pg_class s on s.oid = c.unit_seq
         where s.relpersistence = 'u'
    loop
        begin
            perform pg_catalog.pg_sequence_last_value(pool.unit_seq);
            execute pg_catalog.format('alter sequence intake.%I set logged', pool.relname);
        exception when others then
            execute pg_catalog.format('drop sequence intake.%I', pool.relname);
            execute pg_catalog.format('create sequence intake.%I', pool.relname);
            update intake.engine_config c
               set unit_seq = pg_catalog.format('intake.%I', pool.relname)::pg_catalog.regclass
             where c.pool_id = pool.pool_id;
            -- Its numbers are unknown: the pool is rebuilt before it sells.
            delete from intake.inventory_ready r where r.pool_id = pool.pool_id;
        end;
    end loop;
end
$logged$;
