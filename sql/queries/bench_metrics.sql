-- collect: one metrics collection, as pg_cron runs it
select intake.collect_metrics();

-- count_inventory: the baseline the collector replaces: units per status, counted
select status, count(*) from intake.allocations group by status;

-- queue_depth: intents waiting in the queue
select queue_length from pgmq.metrics('intents');

-- claim_many: buyers lo..hi claim one unit each, in one transaction (each holds an advisory lock)
select count(*) from (
    select intake.claim_resource(%(pool_id)s, 'buyer-' || n)
      from generate_series(%(lo)s::integer, %(hi)s::integer) as n) as claimed;

-- release_some: hand claimed units back (declined payments)
select count(*) filter (where released) from (
    select intake.release_unit(a.pool_id, a.unit_no, a.idempotency_key) as released
      from intake.allocations a
     where a.pool_id = %(pool_id)s and a.status = 'locked'
     limit %(count)s) as r;
