-- The fair opening (0006, 0008). Buyers who arrive before a pool's opens_at
-- join its waiting room; at opens_at the room closes and is admitted in a
-- seeded random order; only then do the claim functions sell to anyone else.

-- What a claim in a pool with an opening is answered instead of a unit, or
-- null once the opening is complete (or inside the admission's transaction).
create or replace function intake.opening_gate(pool_id text, opens_at timestamptz)
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $gate$
    select case when o.completed_at is not null or o.admitting then null
                when o.pool_id is null and clock_timestamp() < opening_gate.opens_at
                     then 'not_open'
                else 'opening' end
      from (select) as one
      left join intake.openings o on o.pool_id = opening_gate.pool_id;
$gate$;

-- The advisory lock the room's door and its closing share: joining holds it
-- shared, closing holds it exclusively.
create or replace function intake.waiting_room_key(pool_id text)
returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $key$
    select hashtextextended('waiting_room' || chr(31) || waiting_room_key.pool_id, 7413);
$key$;

-- A buyer asks before (or around) the opening. Answers:
--   waiting: in the room, with a receipt (asking again gives the same one);
--            the opening admits every buyer given one
--   opened:  the room is closed (or the pool has no opening): claim instead
--   unknown_pool, invalid_user
-- The decision and the insert happen under the room's lock, shared: a room
-- closes only between joins, never during one, so no receipt is handed out
-- after the opener has counted the room.
create or replace function intake.join_waiting_room(pool_id text, user_id text)
returns table (outcome text, receipt uuid, arrival_no bigint)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $join$
declare
    opens timestamptz;
begin
    if join_waiting_room.user_id is null
       or length(join_waiting_room.user_id) not between 1 and 200
       or join_waiting_room.user_id ~ '[[:cntrl:]]' then
        return query select 'invalid_user'::text, null::uuid, null::bigint;
        return;
    end if;
    select c.opens_at into opens
      from intake.engine_config c
     where c.pool_id = join_waiting_room.pool_id;
    if not found then
        return query select 'unknown_pool'::text, null::uuid, null::bigint;
        return;
    end if;
    perform pg_advisory_xact_lock_shared(intake.waiting_room_key(join_waiting_room.pool_id));
    -- Later statements than the lock: they see a closing committed before it.
    -- A buyer already in the room keeps their receipt, closed or not.
    return query
    select 'waiting'::text, w.receipt, w.arrival_no
      from intake.waiting_room w
     where w.pool_id = join_waiting_room.pool_id
       and w.user_id = join_waiting_room.user_id;
    if found then
        return;
    end if;
    -- Open until an opener closes it (at opens_at by DB1's clock, or later):
    -- a buyer who reached the door before then is in, however long the way
    -- from the door to DB1 took under the herd.
    if opens is null
       or exists (select from intake.openings o
                   where o.pool_id = join_waiting_room.pool_id) then
        return query select 'opened'::text, null::uuid, null::bigint;
        return;
    end if;
    -- Two first joins of one buyer at once: the loser keeps the winner's row.
    return query
    insert into intake.waiting_room as w (pool_id, user_id)
    values (join_waiting_room.pool_id, join_waiting_room.user_id)
    on conflict on constraint waiting_room_pkey do update set user_id = w.user_id
    returning 'waiting'::text, w.receipt, w.arrival_no;
end;
$join$;

-- The opener closes the room: waits for every join under way, then records
-- the seed, the room's size and its last arrival in one row. A second call
-- returns what the first recorded. Before opens_at (DB1's clock decides)
-- nothing is recorded and `opens_in_s` says how long to wait.
create or replace function intake.close_waiting_room(pool_id text, drawn_seed bigint)
returns table (seed bigint, waiting integer, last_arrival_no bigint, completed boolean,
               opens_in_s double precision)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $close$
declare
    opens timestamptz;
begin
    select c.opens_at into opens
      from intake.engine_config c
     where c.pool_id = close_waiting_room.pool_id;
    perform pg_advisory_xact_lock(intake.waiting_room_key(close_waiting_room.pool_id));
    return query
    select o.seed, o.waiting, o.last_arrival_no, o.completed_at is not null, 0::double precision
      from intake.openings o
     where o.pool_id = close_waiting_room.pool_id;
    if found then
        return;
    end if;
    if opens is not null and clock_timestamp() < opens then
        return query
        select null::bigint, null::integer, null::bigint, false,
               extract(epoch from opens - clock_timestamp())::double precision;
        return;
    end if;
    return query
    insert into intake.openings as o (pool_id, seed, waiting, last_arrival_no)
    select close_waiting_room.pool_id, close_waiting_room.drawn_seed, count(*), max(w.arrival_no)
      from intake.waiting_room w
     where w.pool_id = close_waiting_room.pool_id
    returning o.seed, o.waiting, o.last_arrival_no, false, 0::double precision;
end;
$close$;

-- Admits a chunk of the closed room: claims for those buyers through the
-- opening's gate, and records each one's place and answer, in one
-- transaction. Only buyers in the room and not yet admitted are taken.
create or replace function intake.admit_from_room(pool_id text, user_ids text[], places integer[])
returns setof intake.claim_result
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $admit$
declare
    answers intake.claim_result[];
begin
    if cardinality(admit_from_room.user_ids) is distinct from cardinality(admit_from_room.places)
       or (select count(distinct u) from unnest(admit_from_room.user_ids) as u)
          <> cardinality(admit_from_room.user_ids) then
        raise exception 'admit_from_room: one place for each of distinct buyers'
              using errcode = 'invalid_parameter_value';
    end if;
    if exists (select from unnest(admit_from_room.user_ids) as u(user_id)
                where not exists (
                        select from intake.waiting_room w
                         where w.pool_id = admit_from_room.pool_id
                           and w.user_id = u.user_id
                           and w.admitted_no is null)) then
        raise exception 'admit_from_room: a buyer is not waiting in pool %', admit_from_room.pool_id
              using errcode = 'invalid_parameter_value';
    end if;
    update intake.openings o set admitting = true
     where o.pool_id = admit_from_room.pool_id and o.completed_at is null;
    if not found then
        raise exception 'admit_from_room: pool % has no opening under way', admit_from_room.pool_id
              using errcode = 'invalid_parameter_value';
    end if;
    answers := array(select r from intake.claim_resources(admit_from_room.pool_id,
                                                          admit_from_room.user_ids) as r);
    update intake.waiting_room w
       set admitted_no = p.place, outcome = a.outcome, unit_no = a.unit_no
      from unnest(answers) as a
      join unnest(admit_from_room.user_ids, admit_from_room.places) as p(user_id, place)
        on p.user_id = a.user_id
     where w.pool_id = admit_from_room.pool_id and w.user_id = a.user_id;
    -- Cleared before commit: no other transaction ever sees it set.
    update intake.openings o set admitting = false where o.pool_id = admit_from_room.pool_id;
    return query select * from unnest(answers);
end;
$admit$;

-- Every buyer in the room is admitted: the pool sells first come, first served.
create or replace function intake.complete_opening(pool_id text)
returns void
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $complete$
    update intake.openings o set completed_at = clock_timestamp()
     where o.pool_id = complete_opening.pool_id and o.completed_at is null;
$complete$;

-- The end users' door to the room (PostgREST: POST /rpc/join_waiting_room),
-- for the verified JWT's user only, like public.claim_resource.
create or replace function public.join_waiting_room(pool_id text)
returns table (outcome text, receipt uuid, arrival_no bigint)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $entry_room$
declare
    caller uuid := auth.uid();
begin
    if caller is null then
        return query select 'unauthenticated'::text, null::uuid, null::bigint;
        return;
    end if;
    return query select * from intake.join_waiting_room(join_waiting_room.pool_id, caller::text);
end;
$entry_room$;
