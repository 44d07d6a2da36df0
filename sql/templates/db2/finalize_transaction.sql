-- The example ledger's commit RPC, part of db2/example_ledger.sql; also run
-- alone by `intake up` to replace the version before it answered with proof
-- of the commit (create or replace keeps the grants and anything calling it).
--
-- The contract every commit RPC keeps (README, "The commit RPC"): one jsonb
-- (or json) argument, idempotent on payload->>'idempotency_key', and an
-- answer that proves the commit: a JSON object with the payload's
-- idempotency_key and status 'committed' (this call wrote the ticket) or
-- 'duplicate' (an earlier call did). intake counts nothing else as sold.
create or replace function public.finalize_transaction(payload jsonb)
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
    -- The ticket is written once, with its legacy order's number already in
    -- it: Realtime streams one change per commit (an insert, never an insert
    -- and then an update). The order number is drawn first and the order is
    -- inserted only by the statement whose ticket insert took, so a
    -- re-delivered intent never produces a second order (it costs a number,
    -- as any aborted insert into a serial does). Both rows are written by one
    -- statement, whose foreign key is checked at its end, when both exist.
    v_ord := pg_catalog.nextval('public.legacy_orders_ord_no_seq'::pg_catalog.regclass);
    with ticket as (
        insert into public.tickets as t
               (idempotency_key, pool_id, user_id, resource_id, unit_no, claimed_at, ord_no)
        values (v_key, v_pool, v_user, v_resource, v_unit, v_claimed, v_ord)
        on conflict (idempotency_key) do nothing
        returning t.ticket_id
    ), legacy_order as (
        insert into public.legacy_orders (ord_no, cust_ref, sku, qty, status, ext_ref)
        select v_ord, v_user, v_pool, 1, 'C', v_resource from ticket
    )
    select ticket.ticket_id into v_ticket from ticket;

    if v_ticket is null then
        select t.ticket_id into v_ticket
          from public.tickets as t
         where t.idempotency_key = v_key;
        return jsonb_build_object(
            'status', 'duplicate', 'idempotency_key', v_key, 'ticket_id', v_ticket);
    end if;

    return jsonb_build_object(
        'status', 'committed', 'idempotency_key', v_key, 'ticket_id', v_ticket, 'ord_no', v_ord);
end;
$finalize$;

comment on function public.finalize_transaction(jsonb) is
    'Commit one validated intent; idempotent on payload->>''idempotency_key''.';

-- Functions are executable by PUBLIC by default (and on Supabase also granted
-- to anon and authenticated): only the trusted drain workers may commit.
revoke all on function public.finalize_transaction(jsonb) from public, anon, authenticated;
grant execute on function public.finalize_transaction(jsonb) to service_role;
