-- Applied after every function above is (re)created: a new function is
-- executable by PUBLIC until these revokes run.
-- Grants: only these doors are open. Functions are executable by PUBLIC by
-- default in PostgreSQL, so that default is taken away first.
-- On Supabase, default privileges may grant new objects to the API roles
-- outright (not through PUBLIC): taken from them by name as well.
revoke all on schema intake from public;
revoke all on all tables in schema intake from public, anon, authenticated;
revoke all on all sequences in schema intake from public, anon, authenticated;
revoke execute on all routines in schema intake from public, anon, authenticated;
revoke execute on function public.claim_resource(text) from public, anon;
grant execute on function public.claim_resource(text) to authenticated, service_role;
revoke execute on function public.join_waiting_room(text) from public, anon;
grant execute on function public.join_waiting_room(text) to authenticated, service_role;
grant usage on schema intake to service_role;
grant execute on function intake.claim_resource(text, text) to service_role;
grant execute on function intake.claim_resources(text, text[]) to service_role;
grant execute on function intake.join_waiting_room(text, text) to service_role;
