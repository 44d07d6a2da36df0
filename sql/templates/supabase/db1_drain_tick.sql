-- The drain's serverless bridge: every 5 seconds pg_cron asks pg_net to POST
-- to `intake serve`'s tick endpoint (POST /api/drain/tick, optionally
-- ?pool=P), with the tick token as a bearer token. Both come from Supabase
-- Vault at each run, never from this file:
--   select vault.create_secret('https://…/api/drain/tick', 'intake_tick_url');
--   select vault.create_secret('<INTAKE_TICK_TOKEN>', 'intake_tick_token');
-- The tick token is its own secret, INTAKE_TICK_TOKEN of `intake serve`, which
-- opens the tick endpoint and nothing else. Never put INTAKE_ADMIN_TOKEN in
-- Vault: whoever can read Vault or pg_net's request log would hold a token
-- that also pauses pools and purges the DLQ.
-- Until both secrets exist the job sends nothing. Needs pg_net (Dashboard:
-- Integrations → pg_net) and pg_cron; pg_cron before 1.5 ticks every minute.
do $tick$
declare
    seconds boolean;
begin
    if pg_catalog.to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null then
        raise exception 'pg_net is not installed: net.http_post is missing'
              using hint = 'enable pg_net in the Supabase dashboard (Integrations → pg_net)';
    end if;
    if pg_catalog.to_regclass('vault.decrypted_secrets') is null then
        raise exception 'Supabase Vault is missing: vault.decrypted_secrets does not exist'
              using hint = 'enable Vault in the Supabase dashboard (Integrations → Vault)';
    end if;
    if pg_catalog.to_regprocedure('cron.schedule(text, text, text)') is null then
        raise exception 'pg_cron is not installed'
              using hint = 'apply intake''s cron migration first';
    end if;
    select pg_catalog.string_to_array(
               pg_catalog.regexp_replace(e.extversion, '[^0-9.].*$', ''), '.')::integer[]
           >= array[1, 5]
      into seconds
      from pg_catalog.pg_extension e where e.extname = 'pg_cron';
    perform cron.schedule(
        'intake-drain-tick',
        case when seconds then '5 seconds' else '* * * * *' end,
        $command$
select net.http_post(
           url := url.decrypted_secret,
           headers := pg_catalog.jsonb_build_object(
               'Content-Type', 'application/json',
               'Authorization', 'Bearer ' operator(pg_catalog.||) token.decrypted_secret),
           body := '{}'::pg_catalog.jsonb,
           timeout_milliseconds := 4000)
  from vault.decrypted_secrets url, vault.decrypted_secrets token
 where url.name = 'intake_tick_url' and token.name = 'intake_tick_token'
$command$);
end
$tick$;
