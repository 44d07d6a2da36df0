-- The example core ledger (DB2) that `intake up` installs into an empty database.
--
-- It stands in for a real system of record: old-style order tables that other
-- software already depends on, a tickets table end users read through
-- PostgREST (Row Level Security), and the one function the drain workers call,
-- public.finalize_transaction(payload jsonb), idempotent on the intent's key
-- (db2/finalize_transaction.sql).
--
-- Runs after common/supabase_compat.sql, in one transaction opened by intake:
-- the statements are deliberately not "if not exists", so a database that
-- already holds any of these objects makes the whole install fail and roll
-- back instead of leaving a ledger that is half ours and half somebody else's.

-- Legacy naming on purpose: abbreviated columns, a one-letter status code and
-- a zone-less timestamp, as systems of record written long ago tend to have.
create table public.legacy_orders (
    ord_no      serial primary key,
    cust_ref    varchar(255) not null,
    sku         varchar(63) not null,
    qty         integer not null default 1 check (qty > 0),
    -- N = new, C = confirmed (paid and ticketed), X = cancelled
    status      char(1) not null default 'N' check (status in ('N', 'C', 'X')),
    ext_ref     uuid,
    created_ts  timestamp(0) not null default localtimestamp(0)
);

comment on table public.legacy_orders is
    'Orders as the legacy system of record knows them; one per committed intent.';

create table public.tickets (
    ticket_id       bigint generated always as identity primary key,
    idempotency_key uuid not null unique,
    pool_id         text not null,
    user_id         text not null,
    resource_id     uuid not null,
    unit_no         bigint not null,
    claimed_at      timestamptz not null,
    committed_at    timestamptz not null default now(),
    ord_no          integer references public.legacy_orders (ord_no)
);

-- The policy filters on user_id for every end-user read.
create index tickets_user_id_idx on public.tickets (user_id);

comment on table public.tickets is
    'Finalized purchases; a signed-in user reads only their own (RLS).';

alter table public.tickets enable row level security;
-- No policy: no API role reads or writes the legacy orders (Supabase's linter
-- flags any table in an exposed schema without RLS, grants or not). The
-- commit RPC, a security definer, writes them as their owner.
alter table public.legacy_orders enable row level security;

-- (select auth.uid()) rather than auth.uid(): evaluated once per statement as
-- an init plan instead of once per row, as Supabase advises for RLS policies.
create policy tickets_select_own on public.tickets
    for select to authenticated
    using (user_id = (select auth.uid())::text);

-- Supabase grants everything in public to anon and authenticated by default
-- privileges; take that back so the only door is the one granted below.
revoke all on table public.legacy_orders, public.tickets from public, anon, authenticated;
revoke all on sequence public.legacy_orders_ord_no_seq, public.tickets_ticket_id_seq
    from public, anon, authenticated;
grant select on table public.tickets to authenticated;

{% include 'db2/finalize_transaction.sql' %}

{% include 'db2/realtime.sql' %}
