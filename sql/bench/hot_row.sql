-- (a) hot row, as an application writes it: a transaction that decrements
-- the pool's one counter, then records the order. The row stays locked for
-- the round trips in between and for the commit, and every other buyer
-- queues behind it. (A real application would check the update's row count;
-- the inventory here never runs out during a run.)
\set uid random(1, 1000000000)
begin;
update bench.inventory
   set available = available - 1
 where pool_id = 'bench' and available > 0;
insert into bench.orders (pool_id, user_id) values ('bench', :uid::text);
end;
