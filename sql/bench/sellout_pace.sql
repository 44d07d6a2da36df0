-- How long the first and the last tenth of a pool's claimed units took, by
-- the time each unit was locked: a claim path that slows as the sale goes on
-- shows it as a longer last tenth.
with claimed as (
    select a.locked_at,
           row_number() over (order by a.locked_at) as n,
           count(*) over () as total
      from intake.allocations a
     where a.pool_id = %(pool_id)s
       and a.locked_at is not null
), tenth as (
    select max(total) as total, greatest(max(total) / 10, 2) as size from claimed
)
select t.total as units,
       t.size as tenth,
       extract(epoch from max(c.locked_at) filter (where c.n = t.size)
                        - max(c.locked_at) filter (where c.n = 1)) as first_seconds,
       extract(epoch from max(c.locked_at) filter (where c.n = t.total)
                        - max(c.locked_at) filter (where c.n = t.total - t.size + 1))
           as last_seconds,
       (select count(*) from intake.allocations a
         where a.pool_id = %(pool_id)s and a.status = 'available') as left_over
  from claimed c cross join tenth t
 group by t.total, t.size;
