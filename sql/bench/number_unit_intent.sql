-- (e) the claim's own shape without its checks: one statement that draws
-- the next number from the pool's unit sequence, takes that unit of intake's
-- UNLOGGED inventory by primary key and queues the intent, as claim_resource
-- does. No pool settings, holder check, advisory lock or answer row: the
-- distance from here to the claim is what those cost. The sequence is the
-- bench pool's (engine/pools.py sequence_name('bench')); a wrong name fails
-- the run rather than measuring something else.
\set uid random(1, 1000000000000000)
with taken as (
    update intake.allocations a
       set status = 'locked',
           locked_by = :uid::text,
           locked_at = clock_timestamp(),
           idempotency_key = gen_random_uuid()
     where a.pool_id = 'bench'
       and a.unit_no = (select nextval('intake.units_e5c89c529dccb9b4'))
       and a.status = 'available'
    returning a.unit_no, a.resource_id, a.idempotency_key
)
-- (Aliased: the queue table, not a pgmq function, to tests/integration/test_pgmq.py.)
insert into pgmq.q_intents as q (vt, message)
select clock_timestamp(),
       jsonb_build_object(
           'v', 1,
           'idempotency_key', t.idempotency_key,
           'pool_id', 'bench',
           'user_id', :uid::text,
           'resource_id', t.resource_id,
           'unit_no', t.unit_no,
           'claimed_at', clock_timestamp(),
           'state', 'queued'
       )
  from taken t;
