-- What `intake up` runs on an example ledger an earlier intake installed:
-- the current commit RPC (create or replace keeps its grants and the tickets)
-- and Row Level Security on the legacy orders, which no API role may read.
{% include 'db2/finalize_transaction.sql' %}

alter table public.legacy_orders enable row level security;
