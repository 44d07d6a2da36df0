-- set_paused: pause or resume a pool (claims answer "paused"; workers hand its intents back)
update intake.engine_config set paused = %(paused)s, updated_at = now()
 where pool_id = %(pool_id)s
returning paused;

-- pool_row: one pool's live settings, locked while they change
select * from intake.engine_config where pool_id = %(pool_id)s for update;
