-- replay: put dead letters back on the intent queue with their key and state
select dlq_msg_id, msg_id
  from intake.replay_dead(%(queue)s, %(dlq)s, %(dlq_msg_ids)s::bigint[], %(intents)s::jsonb[],
                          %(states)s::text[]);

-- purge: drop every dead letter (after exporting them)
select pgmq.purge_queue(%(dlq)s) as purged;

-- intent_state: what DB1 knows of one intent
select state, attempts, webhook_calls, last_error, msg_id, updated_at
  from intake.intent_state where idempotency_key = %(key)s::uuid;
