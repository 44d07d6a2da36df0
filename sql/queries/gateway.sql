-- claim_views: the gateway's once-a-second snapshot: for each watched buyer of one pool, their latest intent (unit, key, state), how many of the pool's queued intents are ahead of it (only when %(with_positions)s: numbering the queue is the costly part, and the gateway spaces it by its measured cost), and the drain's outflow (its latest measure, held to the webhook governor's rate in force: 0 while the breaker is open); {queue} and {archive} are the intent queue's pgmq tables
with watched as (
    select distinct u as user_id from unnest(%(user_ids)s::text[]) as u
), held as (
    -- One probe per buyer on (pool_id, locked_by): never a scan of every holder.
    select w.user_id, a.unit_no, a.resource_id, a.idempotency_key, a.status::text as unit_status
      from watched w
     cross join lateral (
            select a.unit_no, a.resource_id, a.idempotency_key, a.status
              from intake.allocations a
             where a.pool_id = %(pool_id)s and a.locked_by = w.user_id
             order by a.locked_at desc
             limit 1) as a
), queued as (
    -- The pool's queue in claim order: position = intents claimed before mine still there.
    select (q.message ->> 'idempotency_key')::uuid as idempotency_key,
           row_number() over (order by q.msg_id) - 1 as ahead
      from {queue} q
     where %(with_positions)s
       and q.message ->> 'pool_id' = %(pool_id)s
), released as (
    -- A rejected intent gave its unit back: only the archive still names its buyer.
    select distinct on (a.message ->> 'user_id')
           a.message ->> 'user_id' as user_id,
           (a.message ->> 'unit_no')::bigint as unit_no,
           (a.message ->> 'resource_id')::uuid as resource_id,
           (a.message ->> 'idempotency_key')::uuid as idempotency_key
      from {archive} a
     where a.message ->> 'pool_id' = %(pool_id)s
       and a.message ->> 'user_id' in (select w.user_id from watched w
                                        where w.user_id not in (select h.user_id from held h))
     order by a.message ->> 'user_id', a.msg_id desc
)
select v.user_id, v.unit_no, v.resource_id, v.idempotency_key,
       coalesce(s.state, case when v.unit_status = 'consumed' then 'committed' end, 'queued')
         as state,
       qd.ahead,
       -- No intent leaves faster than its webhook call: a governed rate below the
       -- measure is the outflow to come, and an open breaker lets none out for now.
       (select case when w.breaker = 'open' then 0
                    else least(m.processing_velocity, w.governed_rate) end
          from (select m.processing_velocity from intake.engine_metrics m
                 where m.pool_id = %(pool_id)s order by m.collected_at desc limit 1) as m
          left join intake.webhook_governor_state() w on w.pool_id = %(pool_id)s) as velocity
  from (select h.user_id, h.unit_no, h.resource_id, h.idempotency_key, h.unit_status from held h
        union all
        select r.user_id, r.unit_no, r.resource_id, r.idempotency_key, null from released r) as v
  left join intake.intent_state s on s.idempotency_key = v.idempotency_key
  left join queued qd on qd.idempotency_key = v.idempotency_key
 where v.unit_status is not null or s.state = 'rejected';

-- opens_at: each served pool's fair opening as DB1 enforces it
select pool_id, opens_at from intake.engine_config where pool_id = any(%(pool_ids)s::text[]);
