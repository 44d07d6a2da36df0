-- (i) intake's claim, as a trusted backend sends it through a pooler: one
-- statement, a fresh buyer each time.
\set uid random(1, 1000000000)
select c.outcome from intake.claim_resource('bench', :uid::text) as c;
