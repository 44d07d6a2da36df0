-- claim_many: buyers lo..hi claim one unit each, in one batched call (the intents go to the queue)
select count(*) filter (where c.outcome = 'claimed')
  from intake.claim_resources(
         %(pool_id)s,
         array(select 'buyer-' || n from generate_series(%(lo)s::integer, %(hi)s::integer) as n)) as c;

-- finish_committed: the drain's commit step for the oldest queued intents (sold, archived)
select coalesce(intake.finish_committed(
           'intents', array_agg(m.msg_id),
           array_agg((m.message ->> 'idempotency_key')::uuid),
           array_agg(m.message ->> 'pool_id'),
           array_agg((m.message ->> 'unit_no')::bigint)), 0)
  from (select q.msg_id, q.message from pgmq.q_intents q
         order by q.msg_id limit %(count)s) as m;

-- finish_rejected: the drain's reject step for the oldest queued intents (units back on sale, archived)
select coalesce(intake.finish_rejected(
           'intents', array_agg(m.msg_id),
           array_agg((m.message ->> 'idempotency_key')::uuid),
           array_agg(m.message ->> 'pool_id'),
           array_agg((m.message ->> 'unit_no')::bigint),
           array_agg('declined by the bench'::text),
           array_agg(1)), 0)
  from (select q.msg_id, q.message from pgmq.q_intents q
         order by q.msg_id limit %(count)s) as m;

-- mark_validated: the webhook said yes to the oldest queued intents (they still hold their units)
select intake.mark_validated(
           array_agg((m.message ->> 'idempotency_key')::uuid),
           array_agg(m.message ->> 'pool_id'),
           array_agg(m.msg_id),
           array_agg(1))
  from (select q.msg_id, q.message from pgmq.q_intents q
         order by q.msg_id limit %(count)s) as m;

-- dead_letter: the newest queued intents ran out of retries and move to the DLQ (still holding units)
select intake.dead_letter(
           'intents', 'intents_dlq', array_agg(m.msg_id), array_agg(m.message),
           array_agg((m.message ->> 'idempotency_key')::uuid),
           array_agg(m.message ->> 'pool_id'),
           array_agg('queued'::text), array_agg(10), array_agg(10),
           array_agg('webhook unreachable'::text))
  from (select q.msg_id, q.message from pgmq.q_intents q
         order by q.msg_id desc limit %(count)s) as m;

-- replay_dead: the oldest dead letters go back to the queue (the dead letter to the DLQ's archive)
select count(*)
  from intake.replay_dead(
         'intents', 'intents_dlq',
         array(select d.msg_id from pgmq.q_intents_dlq d order by d.msg_id limit %(count)s),
         array(select d.message -> 'intent' from pgmq.q_intents_dlq d
                order by d.msg_id limit %(count)s),
         array(select d.message ->> 'state' from pgmq.q_intents_dlq d
                order by d.msg_id limit %(count)s));

-- fingerprint: the pool's whole volatile state, order-free (locked_at aside: a rebuild restamps it)
select (select count(*) from intake.allocations a where a.pool_id = %(pool_id)s) as units,
       (select sum(hashtextextended(
                   concat_ws('|', a.unit_no, a.resource_id, a.status, a.locked_by,
                             a.idempotency_key), 0)::numeric)
          from intake.allocations a where a.pool_id = %(pool_id)s)::text as allocations,
       (select count(*) from intake.released_units r where r.pool_id = %(pool_id)s) as released,
       (select coalesce(sum(r.unit_no), 0) from intake.released_units r
         where r.pool_id = %(pool_id)s)::text as released_sum,
       (select pg_sequence_last_value(c.unit_seq) from intake.engine_config c
         where c.pool_id = %(pool_id)s) as sequence;

-- status_counts: units per status in the pool, and the release list's length
select count(*) filter (where a.status = 'available') as available,
       count(*) filter (where a.status = 'locked') as locked,
       count(*) filter (where a.status = 'consumed') as consumed,
       (select count(*) from intake.released_units r where r.pool_id = %(pool_id)s) as released
  from intake.allocations a
 where a.pool_id = %(pool_id)s;

-- facts: durable messages per table (what the rebuild reads)
select (select count(*) from pgmq.q_intents) as queue,
       (select count(*) from pgmq.a_intents) as archive,
       (select count(*) from pgmq.q_intents_dlq) as dlq,
       (select count(*) from pgmq.a_intents_dlq) as dlq_archive,
       (select count(*) from intake.intent_state) as intent_state;

-- baseline_scan_messages: every durable message read once, the rebuild's fields extracted
-- (each one aggregated, so that none is optimised away)
select count(m.key), max(m.unit_no), count(m.user_id), count(m.resource_id), max(m.claimed_at)
  from (select (x.intent ->> 'idempotency_key')::uuid as key,
               (x.intent ->> 'unit_no')::bigint as unit_no,
               x.intent ->> 'user_id' as user_id,
               (x.intent ->> 'resource_id')::uuid as resource_id,
               x.intent ->> 'claimed_at' as claimed_at
          from (select q.message as intent from pgmq.q_intents q
                 where q.message ->> 'pool_id' = %(pool_id)s
                union all
                select a.message from pgmq.a_intents a
                 where a.message ->> 'pool_id' = %(pool_id)s
                union all
                select d.message -> 'intent' from pgmq.q_intents_dlq d
                 where d.message -> 'intent' ->> 'pool_id' = %(pool_id)s
                union all
                select d.message -> 'intent' from pgmq.a_intents_dlq d
                 where d.message -> 'intent' ->> 'pool_id' = %(pool_id)s) as x) as m;

-- baseline_scan_state: every intent_state row read once
select count(*), count(*) filter (where s.state = 'rejected') from intake.intent_state s;

-- baseline_scratch: an unlogged table with the inventory's columns and no index
create unlogged table intake.bench_recovery_scratch (like intake.allocations);

-- baseline_write: the pool's rows written once into the scratch table
-- (the inventory's width; the same ids as derived_resource_id, computed inline)
insert into intake.bench_recovery_scratch (pool_id, unit_no, resource_id, status)
select %(pool_id)s, n, md5(c.unit_namespace::text || ':' || n::text)::uuid, 'available'
  from intake.engine_config c
 cross join generate_series(1::bigint, %(units)s::bigint) as n
 where c.pool_id = %(pool_id)s;

-- baseline_drop: the scratch table goes
drop table if exists intake.bench_recovery_scratch;
