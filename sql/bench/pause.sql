-- Hold or open a pool's sale: the sell-out run lets the herd connect and
-- knock on a paused pool first, so the sale starts on warm connections, as
-- a real drop does.
update intake.engine_config set paused = %(paused)s where pool_id = %(pool_id)s;
