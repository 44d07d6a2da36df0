-- set_paused: pause or resume a pool (claims answer "paused"; workers hand its intents back)
update intake.engine_config set paused = %(paused)s, updated_at = now()
 where pool_id = %(pool_id)s
returning paused;

-- pool_row: one pool's live settings, locked while they change
select * from intake.engine_config where pool_id = %(pool_id)s for update;

-- pool_rows: every pool's live settings (the admin API's pool list)
select pool_id, paused, batch_size, visibility_timeout, max_retries, retry_base_seconds,
       retry_max_seconds, commit_rate_per_sec, webhook_rate_per_sec, validation_webhook_url, commit_rpc_name,
       per_user_limit, updated_at
  from intake.engine_config order by pool_id;
