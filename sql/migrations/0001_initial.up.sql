-- outbox_worker schema, revision 0001.
--
-- Error codes raised by the functions below (class "OW", outside every
-- standard SQLSTATE class, so clients can match them exactly):
--   OW001 invalid owner id          OW005 webhook not found
--   OW002 unknown event type        OW006 invalid payload
--   OW003 invalid URL               OW007 payload too large
--   OW004 webhook limit reached     OW008 delivery not found
--   OW009 invalid event type name   OW010 invalid sealed secret

create schema outbox;
comment on schema outbox is 'Transactional outbox and webhook deliveries, managed by outbox_worker (alembic)';

-- ---------------------------------------------------------------- config
-- One row. Rules the database enforces for every client language live here,
-- not in a worker's environment, so a psql user and the worker agree.
create table outbox.config (
    singleton boolean primary key default true check (singleton),
    max_webhooks_per_owner integer not null default 5 check (max_webhooks_per_owner > 0),
    max_payload_bytes integer not null default 262144 check (max_payload_bytes > 0),
    allow_http boolean not null default false,
    allow_private_networks boolean not null default false,
    secret_rotation_overlap interval not null default '24 hours'
);
insert into outbox.config default values;
comment on table outbox.config is 'Single-row settings enforced by the outbox SQL functions';

-- ---------------------------------------------------------------- event types
create table outbox.event_types (
    name text primary key
        check (name ~ '^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$' and length(name) <= 100),
    description text not null default '',
    created_at timestamptz not null default now()
);
comment on table outbox.event_types is 'Catalogue of event types webhooks may subscribe to; extend with outbox.add_event_type()';
insert into outbox.event_types (name, description) values
    ('order.created', 'New order created'),
    ('order.status_changed', 'Order status changed'),
    ('inquiry.received', 'New inquiry received'),
    ('appointment.confirmed', 'Appointment confirmed'),
    ('appointment.cancelled', 'Appointment cancelled'),
    ('customer.created', 'New customer created'),
    ('webhook.disabled', 'A webhook was disabled after failing for too long (emitted by the worker)');

-- ---------------------------------------------------------------- webhooks
create table outbox.webhooks (
    id uuid primary key default gen_random_uuid(),
    owner_id text not null,
    url text not null,
    events text[] not null check (cardinality(events) > 0),
    secret text not null,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    enabled boolean not null default true,
    disabled_reason text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    last_success_at timestamptz,
    failing_since timestamptz
);
create index webhooks_owner_idx on outbox.webhooks (owner_id);
comment on column outbox.webhooks.events is 'Subscribed event types; "*" and "prefix.*" are wildcards';
comment on column outbox.webhooks.failing_since is 'First failed attempt since the last success; drives auto-disable';

-- The secret-free face of a webhook: what list/get return, and what the
-- read-only DBA role may see.
create view outbox.webhook_info as
select id, owner_id, url, events, enabled, disabled_reason, created_at, updated_at,
       last_success_at, failing_since
  from outbox.webhooks;

-- ---------------------------------------------------------------- events (the outbox)
create table outbox.events (
    id bigint generated always as identity primary key,
    owner_id text not null,
    event_type text not null,
    data jsonb not null check (jsonb_typeof(data) = 'object'),
    created_at timestamptz not null default clock_timestamp(),
    dispatched_at timestamptz,
    body bytea
);
-- The dispatcher's claim: oldest undispatched first. Tiny, because
-- dispatched rows leave it.
create index events_undispatched_idx on outbox.events (id) where dispatched_at is null;
comment on column outbox.events.body is 'Exact bytes POSTed for this event, fixed at dispatch, identical for every webhook and retry';

-- ---------------------------------------------------------------- deliveries
create type outbox.delivery_status as enum ('pending', 'delivered', 'failed');

create table outbox.deliveries (
    id bigint generated always as identity primary key,
    event_id bigint not null references outbox.events (id) on delete cascade,
    webhook_id uuid not null references outbox.webhooks (id) on delete cascade,
    status outbox.delivery_status not null default 'pending',
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    leased_until timestamptz,
    leased_by text,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    last_status_code integer,
    last_error text,
    -- Fan-out is idempotent: a re-run dispatch cannot create a second row.
    constraint deliveries_webhook_event_key unique (webhook_id, event_id)
);
-- The sender's claim. A leased row stays 'pending' with next_attempt_at
-- pushed to the lease end, so an expired lease is simply due again: no
-- separate rescuer and one index for both.
create index deliveries_due_idx on outbox.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_failed_idx on outbox.deliveries (webhook_id, completed_at) where status = 'failed';
create index deliveries_event_idx on outbox.deliveries (event_id);
comment on column outbox.deliveries.attempts is 'Attempts logged in the current round (outbox.redeliver starts a new round)';

create table outbox.delivery_attempts (
    id bigint generated always as identity primary key,
    delivery_id bigint not null references outbox.deliveries (id) on delete cascade,
    attempt integer not null,
    attempted_at timestamptz not null,
    duration_ms double precision not null,
    status_code integer,
    error_class text check (error_class in ('http', 'timeout', 'connection', 'dns', 'invalid_target', 'redirect')),
    error text,
    response_body text,
    worker_id text
);
create index delivery_attempts_delivery_idx on outbox.delivery_attempts (delivery_id);

-- ---------------------------------------------------------------- views for DBAs
create view outbox.delivery_log as
select a.id as attempt_id,
       a.delivery_id,
       d.event_id,
       e.event_type,
       w.owner_id,
       w.id as webhook_id,
       w.url,
       a.attempt,
       a.attempted_at,
       a.duration_ms,
       a.status_code,
       a.error_class,
       a.error,
       a.response_body,
       d.status as delivery_status,
       a.worker_id
  from outbox.delivery_attempts a
  join outbox.deliveries d on d.id = a.delivery_id
  join outbox.webhooks w on w.id = d.webhook_id
  join outbox.events e on e.id = d.event_id;
comment on view outbox.delivery_log is 'One row per HTTP attempt, with its webhook URL and event type';

-- Reads only undelivered rows (both partial indexes), so it stays cheap
-- however long the delivered history grows.
create view outbox.queue_stats as
select w.owner_id,
       w.id as webhook_id,
       w.url,
       w.enabled,
       count(d.id) filter (where d.status = 'pending' and (d.leased_until is null or d.leased_until <= now())) as pending,
       count(d.id) filter (where d.status = 'pending' and d.attempts > 0 and (d.leased_until is null or d.leased_until <= now())) as retrying,
       count(d.id) filter (where d.status = 'pending' and d.leased_until > now()) as in_flight,
       count(d.id) filter (where d.status = 'failed') as failed,
       now() - min(d.created_at) filter (where d.status = 'pending') as oldest_pending_age
  from outbox.webhooks w
  left join outbox.deliveries d on d.webhook_id = w.id and d.status in ('pending', 'failed')
 group by w.owner_id, w.id, w.url, w.enabled;
comment on view outbox.queue_stats is 'Queue health per webhook: pending, retrying, in flight, failed, oldest pending age';

create view outbox.event_backlog as
select count(*) as undispatched,
       now() - min(created_at) as oldest_undispatched_age
  from outbox.events
 where dispatched_at is null;
comment on view outbox.event_backlog is 'Events committed but not yet fanned out into deliveries';

-- ---------------------------------------------------------------- helpers
-- 32 bytes from the server's strong random source without pgcrypto (absent
-- from some embedded builds): the 14 fully random bytes of each of three v4
-- UUIDs (version and variant bits skipped).
create function outbox.random_bytes_32() returns bytea
language sql volatile parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select substring(r from 1 for 32)
      from (select string_agg(substring(b from 1 for 6) || substring(b from 8 for 1) || substring(b from 10 for 7), ''::bytea) as r
              from (select uuid_send(gen_random_uuid()) as b from generate_series(1, 3)) u) s
$$;

create function outbox.new_secret() returns text
language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select 'whsec_' || encode(outbox.random_bytes_32(), 'base64') $$;

create function outbox.check_owner_id(p_owner_id text) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_owner_id is null or length(p_owner_id) = 0 or length(p_owner_id) > 255
       or p_owner_id ~ '[[:cntrl:]]' or p_owner_id <> btrim(p_owner_id) then
        raise exception 'invalid owner id: must be 1-255 characters, no control characters or surrounding spaces'
            using errcode = 'OW001';
    end if;
end $$;

-- Patterns that match an event type: '*', each 'prefix.*' and the type
-- itself. Fan-out uses it with the array overlap operator.
create function outbox.event_patterns(p_event_type text) returns text[]
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select array['*', p_event_type] || coalesce(array_agg(array_to_string(parts[1:n], '.') || '.*'), '{}')
      from (select string_to_array(p_event_type, '.') as parts) p,
           generate_series(1, cardinality(parts) - 1) as n
$$;

create function outbox.check_events(p_events text[]) returns text[]
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    e text;
    result text[] := '{}';
begin
    if p_events is null or cardinality(p_events) = 0 then
        raise exception 'events must list at least one event type' using errcode = 'OW002';
    end if;
    foreach e in array p_events loop
        if e is null then
            raise exception 'events must not contain null' using errcode = 'OW002';
        end if;
        if e = '*' then
            null;
        elsif e like '%.*' then
            if not exists (select 1 from outbox.event_types t
                            where starts_with(t.name, left(e, -1))) then
                raise exception 'unknown event type pattern "%": no event type starts with "%"', e, left(e, -1)
                    using errcode = 'OW002', hint = 'see select name from outbox.event_types';
            end if;
        elsif not exists (select 1 from outbox.event_types t where t.name = e) then
            raise exception 'unknown event type "%"', e
                using errcode = 'OW002', hint = 'see select name from outbox.event_types';
        end if;
        if not e = any(result) then
            result := result || e;
        end if;
    end loop;
    return result;
end $$;

-- True for addresses a webhook must never reach: loopback, private,
-- link-local (cloud metadata), CGNAT, multicast, reserved, documentation,
-- and their IPv6 forms. IPv4-mapped and NAT64 addresses are judged by the
-- IPv4 address they carry; deprecated 6to4 and IPv4-compatible are refused.
create function outbox.is_blocked_address(p_addr inet) returns boolean
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if family(p_addr) = 6 then
        if p_addr <<= '::ffff:0:0/96' then
            return outbox.is_blocked_address('0.0.0.0'::inet + (p_addr - '::ffff:0:0'::inet));
        end if;
        if p_addr <<= '64:ff9b::/96' then
            return outbox.is_blocked_address('0.0.0.0'::inet + (p_addr - '64:ff9b::'::inet));
        end if;
        return p_addr <<= '::/96' or p_addr <<= 'fc00::/7' or p_addr <<= 'fe80::/10'
            or p_addr <<= 'fec0::/10' or p_addr <<= 'ff00::/8' or p_addr <<= '2001:db8::/32'
            or p_addr <<= '100::/64' or p_addr <<= '2001::/23' or p_addr <<= '2002::/16';
    end if;
    return p_addr <<= '0.0.0.0/8' or p_addr <<= '10.0.0.0/8' or p_addr <<= '100.64.0.0/10'
        or p_addr <<= '127.0.0.0/8' or p_addr <<= '169.254.0.0/16' or p_addr <<= '172.16.0.0/12'
        or p_addr <<= '192.0.0.0/24' or p_addr <<= '192.0.2.0/24' or p_addr <<= '192.88.99.0/24'
        or p_addr <<= '192.168.0.0/16' or p_addr <<= '198.18.0.0/15' or p_addr <<= '198.51.100.0/24'
        or p_addr <<= '203.0.113.0/24' or p_addr <<= '224.0.0.0/4' or p_addr <<= '240.0.0.0/4';
end $$;

-- Syntax, scheme, credentials and literal-address checks. Names that resolve
-- to private addresses are caught by the worker at send time (it resolves and
-- connects to the checked address); SQL cannot resolve DNS.
create function outbox.check_url(p_url text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    cfg outbox.config;
    m text[];
    scheme text;
    authority text;
    host text;
    port integer;
    labels text[];
    addr inet;
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
            using errcode = 'OW003', hint = 'set outbox.config.allow_http for development';
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
    if not cfg.allow_private_networks then
        if addr is not null and outbox.is_blocked_address(addr) then
            raise exception 'invalid URL "%": % is a loopback, private, link-local or reserved address', p_url, host(addr)
                using errcode = 'OW003', hint = 'set outbox.config.allow_private_networks for development';
        end if;
        if host = 'localhost' or host like '%.localhost' or host like '%.internal' or host like '%.local'
           or host in ('metadata', 'instance-data') then
            raise exception 'invalid URL "%": host "%" is internal', p_url, host
                using errcode = 'OW003', hint = 'set outbox.config.allow_private_networks for development';
        end if;
    end if;
    return p_url;
end $$;

-- ---------------------------------------------------------------- event validation and wake-up
-- Validates every insert, so a plain INSERT from the app is as safe as emit().
-- This runs inside every business transaction that emits, so it is lean: one
-- lookup for both the catalogue and the size limit, the stored (jsonb) size
-- instead of re-serialising the payload, and no SET clause (a per-call GUC
-- save/restore that defeated plan caching and cost ~0.1 ms a call). It runs
-- as the caller and names every object by schema, so the caller's search_path
-- cannot redirect it.
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

-- One NOTIFY per statement, and Postgres folds identical notifications in a
-- transaction into one, so a transaction costs at most one. The payload is
-- empty: a notification only wakes workers; they read the table.
create function outbox.events_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_catalog.pg_notify('outbox_events', '');
    return null;
end $$;

create trigger events_notify after insert on outbox.events
    for each statement execute function outbox.events_notify();

-- ---------------------------------------------------------------- SQL API
-- plpgsql (not SQL) so the INSERT's plan is cached per session, and no SET
-- clause, for the same reason as events_validate: this is the app's hot path.
create function outbox.emit(owner_id text, event_type text, data jsonb) returns bigint
language plpgsql volatile
as $$
declare
    new_id bigint;
begin
    insert into outbox.events (owner_id, event_type, data)
    values (emit.owner_id, emit.event_type, emit.data)
    returning id into new_id;
    return new_id;
end $$;
comment on function outbox.emit(text, text, jsonb) is 'Queue an event in the caller''s transaction; returns the event id';

create function outbox.add_event_type(name text, description text default '') returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if name is null or name !~ '^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$' or length(name) > 100 then
        raise exception 'invalid event type name "%": use dot-separated words like "invoice.paid"', name
            using errcode = 'OW009';
    end if;
    insert into outbox.event_types as t (name, description)
    values (add_event_type.name, coalesce(add_event_type.description, ''))
    on conflict on constraint event_types_pkey do update set description = excluded.description;
end $$;

-- A caller holding the encryption key passes its own sealed secret, so the
-- plaintext never reaches the database (nor its WAL and backups).
create function outbox.check_sealed_secret(p_secret text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_secret is not null and (p_secret !~ '^(whsec_|enc:v1:)[A-Za-z0-9+/=_-]+$' or length(p_secret) > 1000) then
        raise exception 'invalid secret: expected whsec_... or enc:v1:...' using errcode = 'OW010';
    end if;
    return p_secret;
end $$;

create function outbox.create_webhook(owner_id text, url text, events text[], sealed_secret text default null)
returns table (id uuid, secret text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
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
end $$;

create function outbox.update_webhook(owner_id text, webhook_id uuid, url text default null,
                                      events text[] default null, enabled boolean default null)
returns setof outbox.webhook_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
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
    select w.enabled into v_was_enabled
      from outbox.webhooks w
     where w.id = update_webhook.webhook_id and w.owner_id = update_webhook.owner_id
       for update;
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
end $$;

create function outbox.delete_webhook(owner_id text, webhook_id uuid) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(delete_webhook.owner_id);
    delete from outbox.webhooks w
     where w.id = delete_webhook.webhook_id and w.owner_id = delete_webhook.owner_id;
    if not found then
        raise exception 'webhook % not found', delete_webhook.webhook_id using errcode = 'OW005';
    end if;
end $$;

create function outbox.list_webhooks(owner_id text, event_type text default null)
returns setof outbox.webhook_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(list_webhooks.owner_id);
    return query
        select w.* from outbox.webhook_info w
         where w.owner_id = list_webhooks.owner_id
           and (list_webhooks.event_type is null
                or w.events && outbox.event_patterns(list_webhooks.event_type))
         order by w.created_at, w.id;
end $$;

create function outbox.get_webhook(owner_id text, webhook_id uuid)
returns setof outbox.webhook_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(get_webhook.owner_id);
    return query
        select w.* from outbox.webhook_info w
         where w.id = get_webhook.webhook_id and w.owner_id = get_webhook.owner_id;
    if not found then
        raise exception 'webhook % not found', get_webhook.webhook_id using errcode = 'OW005';
    end if;
end $$;

-- The old secret keeps signing (alongside the new one) for the configured
-- overlap, so receivers can switch without dropping a request.
create function outbox.rotate_webhook_secret(owner_id text, webhook_id uuid, sealed_secret text default null)
returns table (id uuid, secret text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(rotate_webhook_secret.owner_id);
    return query
        update outbox.webhooks w
           set previous_secret = w.secret,
               previous_secret_expires_at = now() + (select c.secret_rotation_overlap from outbox.config c),
               secret = coalesce(outbox.check_sealed_secret(rotate_webhook_secret.sealed_secret), outbox.new_secret()),
               updated_at = now()
         where w.id = rotate_webhook_secret.webhook_id and w.owner_id = rotate_webhook_secret.owner_id
        returning w.id, w.secret;
    if not found then
        raise exception 'webhook % not found', rotate_webhook_secret.webhook_id using errcode = 'OW005';
    end if;
end $$;

-- Starts a new round of attempts for one delivery (keeping its webhook-id, so
-- receivers can deduplicate). A delivery in flight is left to finish.
create function outbox.redeliver(delivery_id bigint, owner_id text default null) returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
begin
    update outbox.deliveries d
       set status = 'pending', attempts = 0, next_attempt_at = now(), completed_at = null,
           leased_until = null, leased_by = null
      from outbox.webhooks w
     where d.id = redeliver.delivery_id and w.id = d.webhook_id
       and (redeliver.owner_id is null or w.owner_id = redeliver.owner_id)
       and (d.leased_until is null or d.leased_until <= now())
    returning d.id into v_id;
    if v_id is null then
        if exists (select 1 from outbox.deliveries d join outbox.webhooks w on w.id = d.webhook_id
                    where d.id = redeliver.delivery_id
                      and (redeliver.owner_id is null or w.owner_id = redeliver.owner_id)) then
            return redeliver.delivery_id;  -- in flight right now: it is being delivered
        end if;
        raise exception 'delivery % not found', redeliver.delivery_id using errcode = 'OW008';
    end if;
    return v_id;
end $$;

create function outbox.replay_failed(owner_id text, webhook_id uuid, since timestamptz) returns integer
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    n integer;
begin
    perform outbox.check_owner_id(replay_failed.owner_id);
    perform 1 from outbox.webhooks w
     where w.id = replay_failed.webhook_id and w.owner_id = replay_failed.owner_id;
    if not found then
        raise exception 'webhook % not found', replay_failed.webhook_id using errcode = 'OW005';
    end if;
    update outbox.deliveries d
       set status = 'pending', attempts = 0, next_attempt_at = now(), completed_at = null,
           leased_until = null, leased_by = null
     where d.webhook_id = replay_failed.webhook_id and d.status = 'failed'
       and d.completed_at >= replay_failed.since;
    get diagnostics n = row_count;
    return n;
end $$;
comment on function outbox.replay_failed(text, uuid, timestamptz) is 'Re-queue every failed delivery of a webhook that failed since a time; returns how many';
