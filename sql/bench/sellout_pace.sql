-- A sell-out in tenths, by the time each unit was locked: how many units
-- each tenth holds and when its first and last were locked (epoch seconds).
-- A claim path that slows as the sale goes on shows it as longer late tenths.
with claimed as (
    select a.locked_at, ntile(10) over (order by a.locked_at) as tenth
      from intake.allocations a
     where a.pool_id = %(pool_id)s
       and a.locked_at is not null
)
select tenth,
       count(*) as units,
       extract(epoch from min(locked_at)) as first_at,
       extract(epoch from max(locked_at)) as last_at
  from claimed
 group by tenth
 order by tenth;
