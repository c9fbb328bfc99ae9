-- Reverts revision 0004 to the schema of revision 0001, data of the new
-- columns and tables included. outbox.webhook_info is dropped and created
-- again (a view cannot lose columns): run `outbox-worker grant` again for
-- DBA roles.

drop function outbox.send_test_event(text, uuid);

drop function outbox.list_deliveries(text, uuid, bigint, integer, outbox.delivery_status, timestamptz, timestamptz);
CREATE OR REPLACE FUNCTION outbox.list_deliveries(owner_id text, webhook_id uuid, before_id bigint DEFAULT NULL::bigint, max_rows integer DEFAULT 50)
 RETURNS SETOF outbox.delivery_info
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
begin
    perform outbox.check_owner_id(list_deliveries.owner_id);
    perform 1 from outbox.webhooks w
     where w.id = list_deliveries.webhook_id and w.owner_id = list_deliveries.owner_id;
    if not found then
        raise exception 'webhook % not found', list_deliveries.webhook_id using errcode = 'OW005';
    end if;
    return query
        select d.* from outbox.delivery_info d
         where d.webhook_id = list_deliveries.webhook_id
           and (list_deliveries.before_id is null or d.id < list_deliveries.before_id)
         order by d.id desc
         limit greatest(coalesce(list_deliveries.max_rows, 50), 0);
end $function$;
comment on function outbox.list_deliveries(text, uuid, bigint, integer) is 'A page of a webhook''s deliveries, newest first, with their attempts';

CREATE OR REPLACE FUNCTION outbox.get_delivery(owner_id text, webhook_id uuid, delivery_id bigint)
 RETURNS SETOF outbox.delivery_info
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
begin
    perform outbox.check_owner_id(get_delivery.owner_id);
    return query
        select d.* from outbox.delivery_info d
         where d.id = get_delivery.delivery_id and d.webhook_id = get_delivery.webhook_id
           and d.owner_id = get_delivery.owner_id;
    if not found then
        raise exception 'delivery % not found', get_delivery.delivery_id using errcode = 'OW008';
    end if;
end $function$;

drop function outbox.create_webhook(text, text, text[], text, numeric, jsonb);
CREATE OR REPLACE FUNCTION outbox.create_webhook(owner_id text, url text, events text[], sealed_secret text DEFAULT NULL::text)
 RETURNS TABLE(id uuid, secret text)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
declare
    v_limit integer;
    v_count integer;
    v_events text[];
    v_url text;
begin
    perform outbox.check_owner_id(create_webhook.owner_id);
    v_url := outbox.check_url(create_webhook.url);
    v_events := outbox.check_events(create_webhook.events);
    -- Serialise creates per owner so the limit holds under concurrency;
    -- other owners are not blocked.
    perform pg_advisory_xact_lock(hashtextextended('outbox.webhooks:' || create_webhook.owner_id, 0));
    select max_webhooks_per_owner into v_limit from outbox.config;
    select count(*) into v_count from outbox.webhooks w where w.owner_id = create_webhook.owner_id;
    if v_count >= v_limit then
        raise exception 'webhook limit reached: owner "%" already has % webhooks (maximum %)',
            create_webhook.owner_id, v_count, v_limit
            using errcode = 'OW004', hint = 'delete a webhook or raise outbox.config.max_webhooks_per_owner';
    end if;
    return query
        insert into outbox.webhooks as w (owner_id, url, events, secret)
        values (create_webhook.owner_id, v_url, v_events,
                coalesce(outbox.check_sealed_secret(create_webhook.sealed_secret), outbox.new_secret()))
        returning w.id, w.secret;
end $function$;

-- Everything returning outbox.webhook_info, then the view itself.
drop function outbox.update_webhook(text, uuid, text, text[], boolean, numeric, jsonb);
drop function outbox.list_webhooks(text, text);
drop function outbox.get_webhook(text, uuid);
drop view outbox.webhook_info;
create view outbox.webhook_info as
select id, owner_id, url, events, enabled, disabled_reason, created_at, updated_at,
       last_success_at, failing_since
  from outbox.webhooks;

CREATE OR REPLACE FUNCTION outbox.update_webhook(owner_id text, webhook_id uuid, url text DEFAULT NULL::text, events text[] DEFAULT NULL::text[], enabled boolean DEFAULT NULL::boolean)
 RETURNS SETOF outbox.webhook_info
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
declare
    v_url text;
    v_events text[];
    v_was_enabled boolean;
begin
    perform outbox.check_owner_id(update_webhook.owner_id);
    if update_webhook.url is not null then
        v_url := outbox.check_url(update_webhook.url);
    end if;
    if update_webhook.events is not null then
        v_events := outbox.check_events(update_webhook.events);
    end if;
    -- NO KEY UPDATE: nothing here changes the webhook's id, and a FOR UPDATE
    -- lock would make dispatch's FOR KEY SHARE wait.
    select w.enabled into v_was_enabled
      from outbox.webhooks w
     where w.id = update_webhook.webhook_id and w.owner_id = update_webhook.owner_id
       for no key update;
    if not found then
        raise exception 'webhook % not found', update_webhook.webhook_id using errcode = 'OW005';
    end if;
    if update_webhook.enabled is false and v_was_enabled then
        -- Queued work for a disabled endpoint fails now rather than piling
        -- up; replay_failed() brings it back after re-enabling.
        update outbox.deliveries d
           set status = 'failed', completed_at = now(), last_error = 'webhook disabled'
         where d.webhook_id = update_webhook.webhook_id and d.status = 'pending'
           and (d.leased_until is null or d.leased_until <= now());
    end if;
    return query
        update outbox.webhooks w
           set url = coalesce(v_url, w.url),
               events = coalesce(v_events, w.events),
               enabled = coalesce(update_webhook.enabled, w.enabled),
               disabled_reason = case when update_webhook.enabled is null then w.disabled_reason
                                      when update_webhook.enabled then null
                                      else 'disabled by owner' end,
               failing_since = case when update_webhook.enabled then null else w.failing_since end,
               updated_at = now()
         where w.id = update_webhook.webhook_id
        returning w.id, w.owner_id, w.url, w.events, w.enabled, w.disabled_reason, w.created_at, w.updated_at,
                  w.last_success_at, w.failing_since;
end $function$;

CREATE OR REPLACE FUNCTION outbox.list_webhooks(owner_id text, event_type text DEFAULT NULL::text)
 RETURNS SETOF outbox.webhook_info
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
begin
    perform outbox.check_owner_id(list_webhooks.owner_id);
    return query
        select w.* from outbox.webhook_info w
         where w.owner_id = list_webhooks.owner_id
           and (list_webhooks.event_type is null
                or w.events && outbox.event_patterns(list_webhooks.event_type))
         order by w.created_at, w.id;
end $function$;

CREATE OR REPLACE FUNCTION outbox.get_webhook(owner_id text, webhook_id uuid)
 RETURNS SETOF outbox.webhook_info
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
begin
    perform outbox.check_owner_id(get_webhook.owner_id);
    return query
        select w.* from outbox.webhook_info w
         where w.id = get_webhook.webhook_id and w.owner_id = get_webhook.owner_id;
    if not found then
        raise exception 'webhook % not found', get_webhook.webhook_id using errcode = 'OW005';
    end if;
end $function$;

drop function outbox.check_headers(jsonb);
drop function outbox.check_rate_limit(numeric);
CREATE OR REPLACE FUNCTION outbox.check_url(p_url text)
 RETURNS text
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
declare
    cfg outbox.config;
    m text[];
    scheme text;
    authority text;
    host text;
    port integer;
    labels text[];
    addr inet;
    refusal text;
begin
    select * into cfg from outbox.config;
    if p_url is null or length(p_url) = 0 then
        raise exception 'invalid URL: empty' using errcode = 'OW003';
    end if;
    if length(p_url) > 2048 then
        raise exception 'invalid URL: longer than 2048 characters' using errcode = 'OW003';
    end if;
    if p_url ~ '[[:space:][:cntrl:]]' then
        raise exception 'invalid URL "%": contains whitespace or control characters', p_url using errcode = 'OW003';
    end if;
    m := regexp_match(p_url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?][^#]*)?(#.*)?$');
    if m is null then
        raise exception 'invalid URL "%": expected scheme://host[:port]/path', p_url using errcode = 'OW003';
    end if;
    scheme := lower(m[1]);
    authority := m[2];
    if scheme not in ('http', 'https') then
        raise exception 'invalid URL "%": scheme "%" is not http or https', p_url, scheme using errcode = 'OW003';
    end if;
    if scheme = 'http' and not cfg.allow_http then
        raise exception 'invalid URL "%": https is required', p_url
            using errcode = 'OW003', hint = 'for development: outbox-worker config set allow_http=true';
    end if;
    if m[4] is not null then
        raise exception 'invalid URL "%": fragments (#...) are not allowed', p_url using errcode = 'OW003';
    end if;
    if position('@' in authority) > 0 then
        raise exception 'invalid URL: credentials in the URL are not allowed' using errcode = 'OW003';
    end if;
    m := regexp_match(authority, '^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:([0-9]{1,5}))?$');
    if m is null then
        raise exception 'invalid URL "%": invalid host or port', p_url using errcode = 'OW003';
    end if;
    host := lower(m[1]);
    if m[3] is not null then
        port := m[3]::integer;
        if port < 1 or port > 65535 then
            raise exception 'invalid URL "%": port out of range', p_url using errcode = 'OW003';
        end if;
    end if;
    if left(host, 1) = '[' then
        begin
            addr := substring(host from 2 for length(host) - 2)::inet;
        exception when others then
            raise exception 'invalid URL "%": invalid IPv6 address', p_url using errcode = 'OW003';
        end;
    else
        host := rtrim(host, '.');
        labels := string_to_array(host, '.');
        if host = '' or exists (select 1 from unnest(labels) l
                                 where l = '' or length(l) > 63 or l like '-%' or l like '%-') then
            raise exception 'invalid URL "%": invalid host name', p_url using errcode = 'OW003';
        end if;
        -- A numeric last label means an IPv4 literal; resolvers also accept
        -- 127.1, 0x7f.0.0.1 and 2130706433, so only the dotted quad is allowed.
        if labels[cardinality(labels)] ~ '^(0x[0-9a-f]*|[0-9]+)$' then
            if host !~ '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$' then
                raise exception 'invalid URL "%": IPv4 addresses must be written as four decimal numbers', p_url
                    using errcode = 'OW003';
            end if;
            addr := host::inet;
        end if;
    end if;
    refusal := outbox.address_refusal(addr, cfg.allow_private_networks);
    if refusal = 'never' or host in ('metadata', 'metadata.google.internal', 'instance-data',
                                     'instance-data.ec2.internal') then
        raise exception 'invalid URL "%": % is link-local or cloud metadata, never allowed',
            p_url, coalesce(host(addr), host) using errcode = 'OW003';
    end if;
    if refusal = 'reserved' then
        raise exception 'invalid URL "%": % is a reserved address, never allowed', p_url, host(addr)
            using errcode = 'OW003';
    end if;
    if refusal = 'local' or (not cfg.allow_private_networks
                             and (host = 'localhost' or host like '%.localhost' or host like '%.internal'
                                  or host like '%.local')) then
        raise exception 'invalid URL "%": % is a loopback or private address', p_url, coalesce(host(addr), host)
            using errcode = 'OW003',
                  hint = 'for development: outbox-worker config set allow_private_networks=true';
    end if;
    return p_url;
end $function$;

drop function outbox.emit(text, text, jsonb, text, text);
CREATE OR REPLACE FUNCTION outbox.emit(owner_id text, event_type text, data jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
declare
    new_id bigint;
begin
    insert into outbox.events (owner_id, event_type, data)
    values (emit.owner_id, emit.event_type, emit.data)
    returning id into new_id;
    return new_id;
end $function$;
comment on function outbox.emit(text, text, jsonb) is 'Queue an event in the caller''s transaction; returns the event id';

CREATE OR REPLACE FUNCTION outbox.compile_emit_trigger()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
declare
    v_types text[];
    v_limit integer;
    v_notify boolean;
begin
    perform pg_advisory_xact_lock(1869968482, 3);
    select coalesce(array_agg(t.name order by t.name), '{}') into v_types from outbox.event_types t;
    select c.max_payload_bytes, c.notify into v_limit, v_notify from outbox.config c;
    execute format($f$
create or replace function outbox.events_emit() returns trigger
language plpgsql
as $body$
-- Generated by outbox.compile_emit_trigger() from outbox.event_types and
-- outbox.config; do not edit (the next change to either overwrites it).
declare
    size integer;
    size_limit integer;
begin
    if new.owner_id is null or length(new.owner_id) = 0 or length(new.owner_id) > 255
       or new.owner_id ~ '[[:cntrl:]]' or new.owner_id <> pg_catalog.btrim(new.owner_id) then
        raise exception 'invalid owner id: must be 1-255 characters, no control characters or surrounding spaces'
            using errcode = 'OW001';
    end if;
    if new.data is null or pg_catalog.jsonb_typeof(new.data) <> 'object' then
        raise exception 'invalid payload: data must be a JSON object, got %%',
            coalesce(pg_catalog.jsonb_typeof(new.data), 'null')
            using errcode = 'OW006';
    end if;
    -- What JSON readers refuse (payload limits in docs/dba.md): Python's int
    -- parse stops at 4,300 digits and its parser at ~1,000 levels, Ruby's at
    -- 100 levels; JavaScript reads a number beyond 1.8e308 as Infinity.
    if pg_catalog.jsonb_path_exists(new.data, 'strict $.**{101}') then
        raise exception 'invalid payload: values nested deeper than the limit of 100 objects or arrays'
            using errcode = 'OW012', hint = 'flatten the payload: receivers'' JSON parsers refuse deeper nesting';
    end if;
    if pg_catalog.jsonb_path_exists(new.data, 'strict $.** ? (@.abs() > 1e308)') then
        raise exception 'invalid payload: a number beyond the limit of +/-1e308'
            using errcode = 'OW012', hint = 'send such a number as a JSON string';
    end if;
    -- Separate ifs: a condition with a subquery would run as a query every time.
    if not coalesce(new.event_type = any (%L::text[]), false) then
        if not exists (select 1 from outbox.event_types t where t.name = new.event_type) then
            raise exception 'unknown event type "%%"', new.event_type
                using errcode = 'OW002', hint = 'register it with outbox.add_event_type()';
        end if;
    end if;
    if new.ordering_key is not null then
        -- One key's events take their ids in commit order: the lock holds
        -- the next emitter of the key until this transaction ends, and the
        -- id is drawn after it (an identity is drawn before the trigger).
        -- The claim sends a key's deliveries in id order (docs/dba.md).
        perform pg_catalog.pg_advisory_xact_lock(
            pg_catalog.hashtextextended(new.owner_id || pg_catalog.chr(31) || new.ordering_key, 1869968482));
        new.id := pg_catalog.nextval('outbox.events_id_seq'::regclass);
    end if;
    size := pg_catalog.pg_column_size(new.data);
    if size > %s then
        size_limit := (select c.max_payload_bytes from outbox.config c);
        if size > size_limit then
            raise exception 'payload too large: %% bytes, the limit is %% bytes', size, size_limit
                using errcode = 'OW007', hint = 'outbox.config.max_payload_bytes';
        end if;
    end if;%s
    return new;
end
$body$;
comment on function outbox.events_emit() is
    'Validates each new event and wakes workers (generated by outbox.compile_emit_trigger())';
$f$,
        v_types::text,
        v_limit,
        case when v_notify then $wake$
    -- Quiet NOTIFY (docs/dba.md): "in flight" until this transaction ends,
    -- and NOTIFY only when no worker is "busy". Postgres folds the repeats of
    -- one notification in a transaction into one.
    perform pg_catalog.pg_advisory_xact_lock_shared(1869968482, 1);
    if pg_catalog.pg_try_advisory_lock_shared(1869968482, 2) then
        perform pg_catalog.pg_advisory_unlock_shared(1869968482, 2);
        perform pg_catalog.pg_notify('outbox_events', '');
    end if;$wake$ else '' end);
    return null;
end $function$;

-- Recompiles the trigger (event_types_compile) with the old body, before
-- the columns it would read go.
delete from outbox.event_types where name = 'webhook.test';

CREATE OR REPLACE FUNCTION outbox.cascade_truncate()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
begin
    if tg_table_name = 'deliveries' then
        delete from outbox.delivery_attempts;
    else
        delete from outbox.deliveries;
    end if;
    return null;
end $function$;

drop table outbox.idempotency_keys;
alter table outbox.events drop column idempotency_key;
alter table outbox.webhooks
    drop column headers,
    drop constraint webhooks_rate_limit_check,
    add constraint webhooks_rate_limit_check check (rate_limit > 0);
alter table outbox.config drop column idempotency_window;
comment on column outbox.webhooks.rate_limit is null;
comment on column outbox.events.ordering_key is null;
