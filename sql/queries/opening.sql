-- wait: a buyer arriving before the opening is written down once (a second arrival keeps the first receipt)
insert into intake.waiting_room as w (pool_id, user_id)
values (%(pool_id)s, %(user_id)s)
on conflict (pool_id, user_id) do update set user_id = w.user_id
returning w.receipt, w.arrival_no;

-- lock: one opener per pool at a time, for this transaction only (pooler-safe)
select pg_advisory_xact_lock(hashtextextended('opening' || chr(31) || %(pool_id)s, 7412));

-- opening: the pool's opening, if it has begun
select seed, waiting, completed_at from intake.openings where pool_id = %(pool_id)s;

-- begin_opening: record the seed before anyone is admitted
insert into intake.openings (pool_id, seed, waiting)
values (%(pool_id)s, %(seed)s,
        (select count(*) from intake.waiting_room where pool_id = %(pool_id)s));

-- waiting: everyone who arrived before the opening, in arrival order, and whether admitted yet
select user_id, admitted_no from intake.waiting_room
 where pool_id = %(pool_id)s order by arrival_no;

-- admitted: what the opening answered each admitted buyer
update intake.waiting_room w
   set admitted_no = t.n, outcome = t.o, unit_no = t.u
  from unnest(%(user_ids)s::text[], %(numbers)s::integer[], %(outcomes)s::text[],
              %(units)s::bigint[]) as t(user_id, n, o, u)
 where w.pool_id = %(pool_id)s and w.user_id = t.user_id;

-- complete: every waiting buyer is admitted; later arrivals claim directly
update intake.openings set completed_at = clock_timestamp() where pool_id = %(pool_id)s;
