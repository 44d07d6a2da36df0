
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
        return jsonb_build_object(
            'status', 'duplicate', 'idempotency_key', v_key, 'ticket_id', v_ticket);
    end if;

    -- The legacy order is written only by the call that created the ticket,
    -- so a re-delivered intent never produces a second order.
    insert into public.legacy_orders (cust_ref, sku, qty, status, ext_ref)
    values (v_user, v_pool, 1, 'C', v_resource)
    returning ord_no into v_ord;

    update public.tickets as t set ord_no = v_ord where t.ticket_id = v_ticket;

    return jsonb_build_object(
        'status', 'committed', 'idempotency_key', v_key, 'ticket_id', v_ticket, 'ord_no', v_ord);
end;
