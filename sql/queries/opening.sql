-- join: a buyer asks before (or around) the opening: a receipt, or `opened`
select outcome, receipt, arrival_no from intake.join_waiting_room(%(pool_id)s, %(user_id)s);

-- lock: one admitter per pool at a time, for this transaction only (pooler-safe)
select pg_advisory_xact_lock(hashtextextended('opening' || chr(31) || %(pool_id)s, 7412));

-- close: close the room (or read what closed it); DB1's clock says whether it is time
select seed, waiting, last_arrival_no, completed, opens_in_s
  from intake.close_waiting_room(%(pool_id)s, %(seed)s);

-- room: the buyers the room held when it closed, in arrival order, and whether admitted yet
select user_id, admitted_no from intake.waiting_room
 where pool_id = %(pool_id)s
   and (%(last_arrival_no)s::bigint is null or arrival_no <= %(last_arrival_no)s::bigint)
 order by arrival_no;

-- admit: claim for a chunk of the room, and record each buyer's place and answer
select outcome, unit_no from intake.admit_from_room(%(pool_id)s, %(user_ids)s, %(places)s);

-- complete: every buyer in the room is admitted; later arrivals claim directly
select intake.complete_opening(%(pool_id)s);

-- place: one buyer's place in the room, for the buyer asking where they stand
select receipt, arrival_no, admitted_no, outcome from intake.waiting_room
 where pool_id = %(pool_id)s and user_id = %(user_id)s;

-- record: what the opening stored, for the auditor
select o.seed, o.waiting, o.last_arrival_no, o.opened_at, o.completed_at, c.opens_at
  from intake.engine_config c
  left join intake.openings o on o.pool_id = c.pool_id
 where c.pool_id = %(pool_id)s;

-- ledger: every row of the room, in arrival order, for the auditor
select user_id, arrival_no, admitted_no, outcome, unit_no from intake.waiting_room
 where pool_id = %(pool_id)s order by arrival_no;

-- cut_in: units held now by buyers outside the room, taken before the opening was complete
select count(*) from intake.allocations a
 where a.pool_id = %(pool_id)s
   and a.locked_by is not null
   and a.locked_at < %(completed_at)s
   and not exists (select from intake.waiting_room w
                    where w.pool_id = a.pool_id and w.user_id = a.locked_by
                      and (%(last_arrival_no)s::bigint is null
                           or w.arrival_no <= %(last_arrival_no)s::bigint));
