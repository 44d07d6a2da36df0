-- (b) literal SKIP LOCKED: the first available unit by the partial index,
-- marked locked, and an intent enqueued, in one statement.
\set uid random(1, 1000000000)
with picked as (
    select u.pool_id, u.unit_no
      from bench.units u
     where u.pool_id = 'bench' and u.status = 'available'
     order by u.unit_no
     limit 1
       for update skip locked
), taken as (
    update bench.units u
       set status = 'locked', locked_by = :uid::text, locked_at = clock_timestamp()
      from picked
     where (u.pool_id, u.unit_no) = (picked.pool_id, picked.unit_no)
    returning u.pool_id, u.unit_no, u.resource_id
)
insert into bench.intents (vt, message)
select clock_timestamp(),
       jsonb_build_object('pool_id', pool_id, 'user_id', :uid::text,
                          'resource_id', resource_id, 'unit_no', unit_no)
  from taken;
