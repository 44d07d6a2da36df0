-- Before each seeding run: no units, no release list, the pool's numbering
-- back at the start, and no floor table left from the previous run.
truncate intake.allocations, intake.released_units, intake.inventory_ready;
update intake.engine_config set seeded_units = 0;
select setval(c.unit_seq, 1, false) from intake.engine_config c;
drop table if exists public.seed_floor;
create unlogged table public.seed_floor (like intake.allocations including defaults);
