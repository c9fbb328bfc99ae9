-- Reverts revision 0005: the validate row trigger, the quiet NOTIFY
-- statement trigger (as 0003 left them) and the CHECK constraint.
drop trigger events_emit on outbox.events;
drop function outbox.events_emit();
drop trigger config_compile on outbox.config;
drop trigger event_types_compile on outbox.event_types;
drop function outbox.compile_emit_trigger();
alter table outbox.config drop column notify;

create function outbox.events_validate() returns trigger
language plpgsql
as $$
declare
    size_limit integer;
    known boolean;
    size integer;
begin
    if new.owner_id is null or length(new.owner_id) = 0 or length(new.owner_id) > 255
       or new.owner_id ~ '[[:cntrl:]]' or new.owner_id <> pg_catalog.btrim(new.owner_id) then
        raise exception 'invalid owner id: must be 1-255 characters, no control characters or surrounding spaces'
            using errcode = 'OW001';
    end if;
    if new.data is null or pg_catalog.jsonb_typeof(new.data) <> 'object' then
        raise exception 'invalid payload: data must be a JSON object, got %',
            coalesce(pg_catalog.jsonb_typeof(new.data), 'null')
            using errcode = 'OW006';
    end if;
    select c.max_payload_bytes, exists (select 1 from outbox.event_types t where t.name = new.event_type)
      into size_limit, known
      from outbox.config c;
    if not known then
        raise exception 'unknown event type "%"', new.event_type
            using errcode = 'OW002', hint = 'register it with outbox.add_event_type()';
    end if;
    size := pg_catalog.pg_column_size(new.data);
    if size > size_limit then
        raise exception 'payload too large: % bytes, the limit is % bytes', size, size_limit
            using errcode = 'OW007', hint = 'outbox.config.max_payload_bytes';
    end if;
    return new;
end $$;
create trigger events_validate before insert on outbox.events
    for each row execute function outbox.events_validate();

create function outbox.events_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_catalog.pg_advisory_xact_lock_shared(1869968482, 1);
    if pg_catalog.pg_try_advisory_lock_shared(1869968482, 2) then
        perform pg_catalog.pg_advisory_unlock_shared(1869968482, 2);
        perform pg_catalog.pg_notify('outbox_events', '');
    end if;
    return null;
end $$;
comment on function outbox.events_notify() is
    'Wakes workers at commit (NOTIFY outbox_events), unless a worker is already draining';
create trigger events_notify after insert on outbox.events
    for each statement execute function outbox.events_notify();

alter table outbox.events add constraint events_data_check check (jsonb_typeof(data) = 'object');
