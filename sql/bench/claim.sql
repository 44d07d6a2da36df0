-- (i) intake's claim, as a trusted backend sends it through a pooler: one
-- statement, a fresh buyer each time. Ids from a range wide enough that no
-- two buyers of a run collide (from 1..10^9, ~4 of 90,000 claims would be
-- a repeat answered already_claimed).
\set uid random(1, 1000000000000000)
select c.outcome from intake.claim_resource('bench', :uid::text) as c;
