-- How many intents the run's claims queued: the claims actually made,
-- against which pgbench's transactions × batch size is checked.
select count(*) from pgmq.q_intents;
