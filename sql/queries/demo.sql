-- ledger_tickets: the pool's tickets in DB2: how many, distinct keys and units, first claim to last commit
select count(*) as committed,
       count(distinct idempotency_key) as keys,
       count(distinct resource_id) as units,
       extract(epoch from max(committed_at) - min(claimed_at)) as span_s
  from public.tickets where pool_id = %(pool_id)s;

-- ledger_orders: the legacy orders in DB2, and how many distinct intents they came from
select count(*) as orders, count(distinct ext_ref) as refs from public.legacy_orders;

-- rejected_intents: intents the webhook declined
select count(*) from intake.intent_state where state = 'rejected';
