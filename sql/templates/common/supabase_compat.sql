-- The pieces of Supabase that DB1's grants and entry points rely on, created
-- only where missing so that the same SQL runs unchanged on a Supabase project.
do $compat$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;

    -- Ours, where Supabase's is missing; and ours from before every name in it
    -- was qualified (known by its body's md5), replaced in place.
    if not exists (
        select from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'uid'
           and pg_catalog.md5(p.prosrc) <> '427bd20fa5293b678155019ac7808944'
    ) then
        create schema if not exists auth;
        -- PostgREST puts the verified JWT's claims in request.jwt.claims
        -- (older versions: request.jwt.claim.sub); the subject is the user.
        -- No SET clause, so that it is inlined where RLS policies and the
        -- claim entry point call it; every function, type and operator is
        -- qualified instead, so no caller's search_path can redirect it.
        -- array_remove(array[x], '')[1] is nullif(x, ''), whose "=" would be
        -- looked up through the search_path (it compares with the type's
        -- own equality instead).
        create or replace function auth.uid() returns uuid
            language sql stable
            as $uid$
                select (pg_catalog.array_remove(array[coalesce(
                           (pg_catalog.array_remove(
                                array[pg_catalog.current_setting('request.jwt.claim.sub', true)],
                                ''))[1],
                           (pg_catalog.array_remove(
                                array[pg_catalog.current_setting('request.jwt.claims', true)],
                                ''))[1]::pg_catalog.jsonb operator(pg_catalog.->>) 'sub')],
                       ''))[1]::pg_catalog.uuid
            $uid$;
        grant usage on schema auth to anon, authenticated, service_role;
        grant execute on function auth.uid() to anon, authenticated, service_role;
    end if;
end
$compat$;
