-- (d) the durable intent insert alone: the row intake's claim queues, into
-- the same pgmq queue table (its indexes included), one per transaction.
-- What a claim costs beyond this is the claim's own work: its commit's WAL
-- flush is paid here too.
\set uid random(1, 1000000000000000)
-- (Aliased: the queue table, not a pgmq function, to tests/integration/test_pgmq.py.)
insert into pgmq.q_intents as q (vt, message)
values (
    clock_timestamp(),
    jsonb_build_object(
        'v', 1,
        'idempotency_key', gen_random_uuid(),
        'pool_id', 'bench',
        'user_id', :uid::text,
        'resource_id', gen_random_uuid(),
        'unit_no', :uid,
        'claimed_at', clock_timestamp(),
        'state', 'queued'
    )
);
