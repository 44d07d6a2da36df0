-- Supabase Realtime streams the tables of this publication; a user's client
-- learns of their ticket as it is committed. Elsewhere there is nothing to do.
do $realtime$
begin
    if exists (
        select from pg_catalog.pg_publication
         where pubname = 'supabase_realtime' and not puballtables
    ) and not exists (
        select from pg_catalog.pg_publication_tables
         where pubname = 'supabase_realtime'
           and schemaname = 'public' and tablename = 'tickets'
    ) then
        alter publication supabase_realtime add table public.tickets;
    end if;
end
$realtime$;
