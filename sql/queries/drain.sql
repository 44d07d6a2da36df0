-- engine_pools: every pool's live settings, re-read by workers before each batch; inventory_lost: a DB1 crash emptied the pool's inventory (the marker check is all a whole pool costs)
select pool_id, paused, batch_size, visibility_timeout, validation_webhook_url,
       commit_rpc_name, max_retries, commit_rate_per_sec, retry_base_seconds, retry_max_seconds,
       case when exists (select from intake.inventory_ready r where r.pool_id = c.pool_id)
            then false
            else intake.inventory_lost(c.pool_id)
       end as inventory_lost
  from intake.engine_config c;

-- intent_states: what is known about the intents of a batch (no row: queued, never failed)
select idempotency_key::text as key, state, attempts
  from intake.intent_state where idempotency_key = any(%(keys)s::uuid[]);

-- mark_validated: the webhook said yes
select intake.mark_validated(%(keys)s::uuid[], %(pool_ids)s::text[], %(msg_ids)s::bigint[],
                             %(calls)s::integer[]);

-- finish_committed: committed in DB2: consume the units, archive the messages
select intake.finish_committed(%(queue)s, %(msg_ids)s::bigint[], %(keys)s::uuid[],
                               %(pool_ids)s::text[], %(unit_nos)s::bigint[]);

-- finish_rejected: the webhook said no: release the units, archive the messages
select intake.finish_rejected(%(queue)s, %(msg_ids)s::bigint[], %(keys)s::uuid[],
                              %(pool_ids)s::text[], %(unit_nos)s::bigint[], %(errors)s::text[],
                              %(calls)s::integer[]);

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
