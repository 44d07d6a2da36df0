-- list_queues: the queues pgmq knows
select queue_name from pgmq.list_queues();

-- create_queue: a logged queue (a claimed intent must survive a crash)
select pgmq.create(%(queue)s);

-- drop_queue: remove a queue and its archive
select pgmq.drop_queue(%(queue)s);

-- queue_metrics: depth and ages of one queue
select queue_length, newest_msg_age_sec, oldest_msg_age_sec, total_messages
  from pgmq.metrics(%(queue)s);

-- read: lease up to qty messages for vt seconds
select msg_id, read_ct, enqueued_at, vt, message
  from pgmq.read(%(queue)s, %(vt)s::integer, %(qty)s::integer);

-- send: enqueue one message, visible after delay seconds
select pgmq.send(%(queue)s, %(message)s::jsonb, %(delay)s::integer) as msg_id;

-- set_vt: hide one message for vt more seconds
select msg_id from pgmq.set_vt(%(queue)s, %(msg_id)s::bigint, %(vt)s::integer);

-- archive: move one message to the archive (the audit trail)
select pgmq.archive(%(queue)s, %(msg_id)s::bigint) as archived;

-- delete: remove one message for good
select pgmq.delete(%(queue)s, %(msg_id)s::bigint) as deleted;

-- purge_queue: remove every message of a queue
select pgmq.purge_queue(%(queue)s) as purged;
