-- The example core ledger (DB2) that `intake up` installs into an empty database.
--
-- It stands in for a real system of record: old-style order tables that other
-- software already depends on, a tickets table end users read through
-- PostgREST (Row Level Security), and the one function the drain workers call,
-- public.finalize_transaction(payload jsonb), idempotent on the intent's key.
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

create function public.finalize_transaction(payload jsonb)
returns jsonb
language plpgsql
volatile
security definer
-- A definer's function must not resolve names through a search_path the
-- caller controls; every object below is schema-qualified.
set search_path = pg_catalog, pg_temp
as $finalize$
declare
    required constant text[] := array[
        'idempotency_key', 'pool_id', 'user_id', 'resource_id', 'unit_no', 'claimed_at'
    ];
    missing text[];
    checking text;
    v_key uuid;
    v_pool text;
    v_user text;
    v_resource uuid;
    v_unit bigint;
    v_claimed timestamptz;
    v_ticket bigint;
    v_ord integer;
begin
    if payload is null or jsonb_typeof(payload) <> 'object' then
        raise exception using
            errcode = '22023',
            message = format(
                'finalize_transaction: the payload must be a JSON object, got %s',
                coalesce(jsonb_typeof(payload), 'nothing')
            );
    end if;

    select array_agg(r.k order by r.n) into missing
      from unnest(required) with ordinality as r(k, n)
     where coalesce(payload ->> r.k, '') = '';
    if missing is not null then
        raise exception using
            errcode = '22023',
            message = format(
                'finalize_transaction: the payload lacks %s',
                array_to_string(missing, ', ')
            ),
            hint = 'Required keys: ' || array_to_string(required, ', ') || '.';
    end if;

    -- Text fields must be JSON strings: a number or an object where a user id
    -- belongs means the caller is sending something else than an intent.
    foreach checking in array array['pool_id', 'user_id'] loop
        if jsonb_typeof(payload -> checking) <> 'string'
           or length(payload ->> checking) > 255 then
            raise exception using
                errcode = '22023',
                message = format(
                    'finalize_transaction: payload key %s must be a string of at most '
                    '255 characters, got %s',
                    checking, payload -> checking
                );
        end if;
    end loop;
    v_pool := payload ->> 'pool_id';
    v_user := payload ->> 'user_id';

    -- The casts are the validation. The block only reads, so its
    -- subtransaction never takes a transaction id, even in a batch of many.
    begin
        checking := 'idempotency_key';
        v_key := (payload ->> 'idempotency_key')::uuid;
        checking := 'resource_id';
        v_resource := (payload ->> 'resource_id')::uuid;
        checking := 'unit_no';
        v_unit := (payload ->> 'unit_no')::bigint;
        checking := 'claimed_at';
        v_claimed := (payload ->> 'claimed_at')::timestamptz;
    exception when data_exception then
        raise exception using
            errcode = '22023',
            message = format(
                'finalize_transaction: payload key %s is malformed, got %s',
                checking, payload -> checking
            ),
            detail = sqlerrm;
    end;
    if not isfinite(v_claimed) then
        raise exception using
            errcode = '22023',
            message = format(
                'finalize_transaction: payload key claimed_at must be a point in time, got %s',
                payload -> 'claimed_at'
            );
    end if;

    -- The unique key is the idempotency guarantee: a second call with the same
    -- key, even a concurrent one, waits for the first and then inserts nothing.
    insert into public.tickets as t
           (idempotency_key, pool_id, user_id, resource_id, unit_no, claimed_at)
    values (v_key, v_pool, v_user, v_resource, v_unit, v_claimed)
    on conflict (idempotency_key) do nothing
    returning t.ticket_id into v_ticket;

    if v_ticket is null then
        select t.ticket_id into v_ticket
          from public.tickets as t
         where t.idempotency_key = v_key;
        return jsonb_build_object('status', 'duplicate', 'ticket_id', v_ticket);
    end if;

    -- The legacy order is written only by the call that created the ticket,
    -- so a re-delivered intent never produces a second order.
    insert into public.legacy_orders (cust_ref, sku, qty, status, ext_ref)
    values (v_user, v_pool, 1, 'C', v_resource)
    returning ord_no into v_ord;

    update public.tickets as t set ord_no = v_ord where t.ticket_id = v_ticket;

    return jsonb_build_object('status', 'committed', 'ticket_id', v_ticket, 'ord_no', v_ord);
end;
$finalize$;

comment on function public.finalize_transaction(jsonb) is
    'Commit one validated intent; idempotent on payload->>''idempotency_key''.';

-- Functions are executable by PUBLIC by default (and on Supabase also granted
-- to anon and authenticated): only the trusted drain workers may commit.
revoke all on function public.finalize_transaction(jsonb) from public, anon, authenticated;
grant execute on function public.finalize_transaction(jsonb) to service_role;

-- Supabase Realtime streams the tables of this publication; a user's client
-- learns of their ticket as it is committed. Elsewhere there is nothing to do.
do $realtime$
begin
    if exists (
        select from pg_catalog.pg_publication
         where pubname = 'supabase_realtime' and not puballtables
    ) and not exists (
        select from pg_catalog.pg_publication_tables
         where pubname = 'supabase_realtime'
           and schemaname = 'public' and tablename = 'tickets'
    ) then
        alter publication supabase_realtime add table public.tickets;
    end if;
end
$realtime$;
