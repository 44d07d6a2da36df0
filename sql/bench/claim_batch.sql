-- (i×N) intake's batched claim, as a trusted backend that gathers its
-- buyers' requests sends it: one statement claims for :batch fresh buyers
-- (pgbench -D batch=N). The ids are consecutive from a random base, so no
-- two batches of a run share a buyer and every position is a real claim.
\set base random(0, 999999999999)
select count(*)
  from intake.claim_resources(
         'bench',
         array(select (:base::bigint * 1000 + g)::text from generate_series(1, :batch) as g));
