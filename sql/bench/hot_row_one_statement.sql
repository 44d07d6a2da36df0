-- (a') hot row at its best: the same decrement and order in one statement,
-- one round trip like intake's claim. The row is still held through the
-- commit's WAL flush, so buyers still go one at a time.
\set uid random(1, 1000000000)
with taken as (
    update bench.inventory
       set available = available - 1
     where pool_id = 'bench' and available > 0
    returning pool_id
)
insert into bench.orders (pool_id, user_id)
select pool_id, :uid::text from taken;
