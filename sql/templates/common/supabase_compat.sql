-- The pieces of Supabase that DB1's grants and entry points rely on, created
-- only where missing so that the same SQL runs unchanged on a Supabase project.
do $compat$
begin
    if not exists (select from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;

    if not exists (
        select from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'uid'
    ) then
        create schema if not exists auth;
        -- PostgREST puts the verified JWT's claims in request.jwt.claims
        -- (older versions: request.jwt.claim.sub); the subject is the user.
        create function auth.uid() returns uuid
            language sql stable
            as $uid$
                select nullif(
                    coalesce(
                        nullif(current_setting('request.jwt.claim.sub', true), ''),
                        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
                    ),
                    ''
                )::uuid
            $uid$;
        grant usage on schema auth to anon, authenticated, service_role;
        grant execute on function auth.uid() to anon, authenticated, service_role;
    end if;
end
$compat$;
