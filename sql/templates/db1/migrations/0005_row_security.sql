-- 0005: Row Level Security on every table of the intake schema.
--
-- No policies: no API role (anon, authenticated, service_role without
-- BYPASSRLS) reads or writes a row, even on a Supabase project that exposes
-- the intake schema to reach claim_resource(s) and grants its tables as
-- Supabase's guide for a custom schema does. intake's own functions run as
-- the tables' owner (security definer), which RLS does not apply to, and the
-- CLI and workers connect as that owner, so nothing of intake's changes.
-- Tables a later migration adds enable it themselves; a test checks.
do $rls$
declare
    t regclass;
begin
    for t in
        select c.oid::regclass
          from pg_catalog.pg_class c
         where c.relnamespace = 'intake'::pg_catalog.regnamespace
           and c.relkind in ('r', 'p')
           and not c.relrowsecurity
         order by c.relname
    loop
        execute pg_catalog.format('alter table %s enable row level security', t);
    end loop;
end
$rls$;
