-- The floor under seeding: the rows seed_units writes (same columns, a
-- fresh uuid each), in one statement into an UNLOGGED table with no index,
-- no chunked commits and no ANALYZE afterwards.
insert into public.seed_floor (pool_id, unit_no, resource_id)
select %(pool_id)s, n, gen_random_uuid()
  from generate_series(1, %(units)s::bigint) as n;
