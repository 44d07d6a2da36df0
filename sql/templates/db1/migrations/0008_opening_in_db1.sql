-- 0008: the fair opening is DB1's, not one face's.
--
-- engine_config.opens_at: every claim function refuses a pool's claims until
-- its opening is complete, whatever door the buyer came through (the
-- gateway, PostgREST's claim_resource, `intake claim`). Null: no opening.
--
-- openings.last_arrival_no: the last buyer in the room when it closed. The
-- room closes in one step against every buyer joining it (see
-- intake.close_waiting_room), so the set the opener shuffles is exactly the
-- rows up to this number, and an auditor replays it from DB1 alone.
--
-- openings.admitting: true only inside an admission's own transaction (it is
-- set and cleared there, so no other transaction ever sees it true): the one
-- way past the gate before the opening is complete.
alter table intake.engine_config add column if not exists opens_at timestamptz;
alter table intake.openings add column if not exists last_arrival_no bigint;
alter table intake.openings add column if not exists admitting boolean not null default false;
