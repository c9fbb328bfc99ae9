-- Reverts revision 0003: every emitting transaction notifies again.
drop function outbox.release_busy();
create or replace function outbox.events_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_catalog.pg_notify('outbox_events', '');
    return null;
end $$;
comment on function outbox.events_notify() is null;
