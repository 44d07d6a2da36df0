-- engine_pools: every pool's live settings, re-read by workers before each batch; inventory_lost: a DB1 crash emptied the pool's inventory (the marker check is all a whole pool costs); webhook_governed: whether calls to its webhook go through the governor now (a rate set or learned, a Retry-After, the breaker, or failures in the last 10 s: then every batch reports, so the governor knows whether the provider still answers): when not, a batch spends no statement on it
select pool_id, paused, batch_size, visibility_timeout, validation_webhook_url,
       commit_rpc_name, max_retries, commit_rate_per_sec, retry_base_seconds, retry_max_seconds,
       webhook_rate_per_sec,
       case when exists (select from intake.inventory_ready r where r.pool_id = c.pool_id)
            then false
            else intake.inventory_lost(c.pool_id)
       end as inventory_lost,
       c.webhook_rate_per_sec > 0
       or coalesce(g.learned_rate is not null or g.paused_until > clock_timestamp()
                   or g.breaker <> 'closed' or g.failures_in_row > 0
                   or g.last_failure_at > clock_timestamp() - interval '10 seconds'
                   or g.ramp_started_at is not null, false) as webhook_governed
  from intake.engine_config c
  left join intake.webhook_governors g on g.webhook_url = c.validation_webhook_url;

-- read: lease up to qty messages for vt seconds, longest visible first (intake.read_intents: pgmq.read without walking past the leased head)
select msg_id, read_ct, enqueued_at, vt, message from intake.read_intents(%(vt)s::integer, %(qty)s::integer);

-- intent_states: per intent of a batch, in order: its state (null: queued, never failed), and its unit as DB1 holds it, to tell an intent the claim path issued from a message written by anything else; every lookup by primary key
select s.state, s.attempts, s.msg_id as state_msg_id,
       r.pool_id is not null as inventory_ready,
       a.status::text as unit_status,
       a.idempotency_key = m.key as same_key,
       a.locked_by = m.user_id as same_user,
       a.resource_id = m.resource_id as same_resource
  from unnest(%(keys)s::uuid[], %(pool_ids)s::text[], %(unit_nos)s::bigint[],
              %(user_ids)s::text[], %(resource_ids)s::uuid[])
       with ordinality as m(key, pool_id, unit_no, user_id, resource_id, ord)
  -- "limit 1" keeps each lookup a lateral probe of the primary key: as a
  -- plain join, a batch of thousands would be hashed against a whole table.
  left join lateral (select s.state, s.attempts, s.msg_id from intake.intent_state s
                      where s.idempotency_key = m.key limit 1) s on true
  left join intake.inventory_ready r on r.pool_id = m.pool_id
  left join lateral (select a.status, a.idempotency_key, a.locked_by, a.resource_id
                       from intake.allocations a
                      where a.pool_id = m.pool_id and a.unit_no = m.unit_no limit 1) a on true
 order by m.ord;

-- refuse: messages that are not intents DB1's claim path issued go to the DLQ, marked refused
select intake.refuse_messages(%(queue)s, %(dlq)s, %(msg_ids)s::bigint[], %(messages)s::jsonb[],
                              %(errors)s::text[]);

-- mark_validated: the webhook said yes; committed without waiting for the WAL flush
-- Why not durably: the record of an answer only spares the next worker from
-- asking the webhook again after a worker dies, and a worker's death loses no
-- commit. A DB1 crash may lose the last few of these commits (never one that a
-- later durable commit depends on: WAL is flushed in order); those intents then
-- ask the webhook again under the same idempotency key, as before the record
-- existed. Each answer group was a WAL flush of its own.
select intake.mark_validated(%(keys)s::uuid[], %(pool_ids)s::text[], %(msg_ids)s::bigint[],
                             %(calls)s::integer[]),
       set_config('synchronous_commit', 'off', true);

-- finish_committed: committed in DB2: consume the units, archive the messages
select intake.finish_committed(%(queue)s, %(msg_ids)s::bigint[], %(keys)s::uuid[],
                               %(pool_ids)s::text[], %(unit_nos)s::bigint[]);

-- finish_rejected: the webhook said no: release the units, archive the messages; committed without waiting for the WAL flush, as mark_validated (a claim that takes a released unit commits durably, and flushes this with it)
select intake.finish_rejected(%(queue)s, %(msg_ids)s::bigint[], %(keys)s::uuid[],
                              %(pool_ids)s::text[], %(unit_nos)s::bigint[], %(errors)s::text[],
                              %(calls)s::integer[]),
       set_config('synchronous_commit', 'off', true);

-- schedule_retries: count a failure and hide the messages for their backoff
select intake.schedule_retries(%(queue)s, %(msg_ids)s::bigint[], %(keys)s::uuid[],
                               %(pool_ids)s::text[], %(states)s::text[], %(attempts)s::integer[],
                               %(calls)s::integer[], %(errors)s::text[], %(delays)s::integer[]);

-- dead_letter: move intents past max_retries to the dead-letter queue
select intake.dead_letter(%(queue)s, %(dlq)s, %(msg_ids)s::bigint[], %(intents)s::jsonb[],
                          %(keys)s::uuid[], %(pool_ids)s::text[], %(states)s::text[],
                          %(attempts)s::integer[], %(calls)s::integer[], %(errors)s::text[]);

-- hand_back: return messages to the queue (or extend their lease) without counting an attempt
select intake.hand_back(%(queue)s, %(msg_ids)s::bigint[], %(delay)s::integer);

-- archive_many: archive messages whose intent was already finished
select count(*) from pgmq.archive(%(queue)s, %(msg_ids)s::bigint[]);

-- take_commit_tokens: commits granted by the pool's fleet-wide rate limit
select intake.take_commit_tokens(%(pool_id)s, %(wanted)s::integer);

-- take_webhook_calls: calls to the pool's webhook granted now by its governor (or how long to wait, or one probe)
select granted, wait_s, probe from intake.take_webhook_calls(%(pool_id)s, %(wanted)s::integer);

-- report_webhook_calls: what the provider answered: the governor learns its rate, obeys Retry-After, trips or closes the breaker
select breaker, changed, learned_rate, paused_until, answering
  from intake.report_webhook_calls(%(pool_id)s, %(ok)s::integer, %(throttled)s::integer,
                                   %(failed)s::integer, %(retry_after_s)s::double precision,
                                   %(own_ok_per_s)s::double precision,
                                   %(asked_s_ago)s::double precision);
