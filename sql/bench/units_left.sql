-- Whether each workload's sale still had units when its run ended: a run
-- that ran dry spent its last seconds answering "sold out", which is cheaper
-- than a claim, so its rate would flatter it.
select
    exists (select from bench.inventory i
             where i.pool_id = 'bench' and i.available > 0) as hot_row,
    exists (select from bench.units u
             where u.pool_id = 'bench' and u.status = 'available') as skip_locked,
    exists (select from intake.engine_config c
             where c.pool_id = 'bench'
               and coalesce(pg_sequence_last_value(c.unit_seq), 0) < c.inventory) as claim;
