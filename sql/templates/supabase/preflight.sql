-- Stop here, with nothing changed, on a database that is not a Supabase
-- project: the grants and the claim entry point name Supabase's API roles and
-- auth.uid(), which this render never creates (`intake up` does, elsewhere).
do $preflight$
declare
    missing text[];
begin
    select pg_catalog.array_agg(r.rolname order by r.rolname) into missing
      from (values ('anon'), ('authenticated'), ('service_role')) as r(rolname)
     where not exists (select from pg_catalog.pg_roles p where p.rolname = r.rolname);
    if pg_catalog.to_regprocedure('auth.uid()') is null then
        missing := pg_catalog.array_append(missing, 'auth.uid()');
    end if;
    if missing is not null then
        raise exception 'intake''s Supabase migrations need a Supabase project: % missing',
              pg_catalog.array_to_string(missing, ', ')
              using hint = 'on plain PostgreSQL run `intake up` instead; it creates them';
    end if;
end
$preflight$;
