-- (a) hot row: decrement the pool's one counter and record the order, in one
-- statement (one round trip, like intake's claim).
\set uid random(1, 1000000000)
with taken as (
    update bench.inventory
       set available = available - 1
     where pool_id = 'bench' and available > 0
    returning pool_id
)
insert into bench.orders (pool_id, user_id)
select pool_id, :uid::text from taken;
