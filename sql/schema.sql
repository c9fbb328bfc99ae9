-- The outbox schema as it stands: what `outbox-worker migrate` builds at the
-- head revision, in one file for reading and review. Create databases with
-- the migrations (they record the revision); a change goes here and into a
-- new revision under sql/migrations/, and tests/test_schema.py checks that
-- the two build the same schema.
--
-- Error codes raised by the functions below (class "OW", outside every
-- standard SQLSTATE class, so clients can match them exactly; OW02x is
-- reserved for API keys, OW03x for the delivery features: keys, headers, rate
-- limits, test events):
--   OW001 invalid owner id          OW007 payload too large
--   OW002 unknown event type        OW008 delivery not found
--   OW003 invalid URL               OW009 invalid event type name
--   OW004 webhook limit reached     OW010 invalid sealed secret
--   OW005 webhook not found         OW011 id cannot be changed
--   OW006 invalid payload           OW012 payload beyond receivers' limits
--   OW013 no event types            OW014 unknown config setting
--   OW020 API key not found         OW021 invalid API key prefix
--   OW030 invalid ordering key      OW033 invalid headers
--   OW031 invalid idempotency key   OW034 invalid rate limit
--   OW032 reserved header name      OW035 webhook disabled
--
-- Advisory locks of the class 1869968482 ('outb', docs/dba.md): (.., 1) "in
-- flight" and (.., 2) "busy" for quiet NOTIFY, (.., 3) serialises the emit
-- trigger's recompiles.

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
    secret_rotation_overlap interval not null default '24 hours',
    notify boolean not null default true,
    idempotency_window interval not null default '24 hours' check (idempotency_window > interval '0'),
    message_id_prefix text not null default ''
        constraint config_message_id_prefix_check check (message_id_prefix ~ '^[a-z0-9]{0,16}$')
);
insert into outbox.config default values;
comment on table outbox.config is 'Single-row settings enforced by the outbox SQL functions';
comment on column outbox.config.notify is
    'Emitting transactions wake workers with NOTIFY (skipped while a worker drains); false: workers only poll';
comment on column outbox.config.idempotency_window is
    'How long an idempotency key makes a second emit return the first event (then purge removes it)';
comment on column outbox.config.message_id_prefix is
    'webhook-id is evt_<prefix>_<event id> when set (evt_<event id> when empty): unique across databases; set by outbox-worker migrate with several databases';

-- One setting of outbox.config by its column name, the value given as text
-- and cast to the column's type (`outbox-worker config set`); returns the
-- value stored. Runs as the caller: only a role that may update the table can.
create function outbox.set_config(p_name text, p_value text) returns text
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_type text;
    v_stored text;
begin
    select format_type(a.atttypid, a.atttypmod) into v_type
      from pg_attribute a
     where a.attrelid = 'outbox.config'::regclass and a.attname = p_name
       and a.attnum > 0 and not a.attisdropped and a.attname <> 'singleton';
    if v_type is null then
        raise exception 'unknown setting "%"', p_name
            using errcode = 'OW014', hint = 'see select * from outbox.config';
    end if;
    execute format('update outbox.config set %I = cast($1 as %s) returning cast(%I as text)', p_name, v_type, p_name)
       into v_stored using p_value;
    return v_stored;
end $$;
comment on function outbox.set_config(text, text) is 'Change one setting of outbox.config by name; returns the value stored';

-- ---------------------------------------------------------------- event types
create table outbox.event_types (
    name text primary key
        check (name ~ '^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$' and length(name) <= 100),
    description text not null default '',
    created_at timestamptz not null default now()
);
comment on table outbox.event_types is 'Catalogue of event types webhooks may subscribe to; extend with outbox.add_event_type()';
-- The topics of the brand webhooks API are event types like any other.
insert into outbox.event_types (name, description) values
    ('order.created', 'New order created'),
    ('order.status_changed', 'Order status changed'),
    ('inquiry.received', 'New inquiry received'),
    ('appointment.confirmed', 'Appointment confirmed'),
    ('appointment.cancelled', 'Appointment cancelled'),
    ('customer.created', 'New customer created'),
    ('webhook.disabled', 'A webhook was disabled after failing for too long (emitted by the worker)'),
    ('webhook.test', 'A test event sent to one webhook by outbox.send_test_event()'),
    ('Deals', 'Brand topic: deals'),
    ('Showings', 'Brand topic: showings'),
    ('Contacts', 'Brand topic: contacts');

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
    failing_since timestamptz,
    rate_limit numeric constraint webhooks_rate_limit_check check (rate_limit between 0.01 and 10000),
    -- The send slot the next claim paces from (GCRA's theoretical arrival
    -- time); a 429 with Retry-After pushes it out, limited or not.
    rate_next_at timestamptz,
    headers jsonb constraint webhooks_headers_check check (jsonb_typeof(headers) = 'object')
);
create index webhooks_owner_idx on outbox.webhooks (owner_id);
-- The worker erases previous secrets whose overlap has ended (expired_previous_secrets).
create index webhooks_previous_secret_idx on outbox.webhooks (previous_secret_expires_at)
    where previous_secret is not null;
comment on column outbox.webhooks.events is 'Subscribed event types; "*" and "prefix.*" are wildcards';
comment on column outbox.webhooks.failing_since is 'First failed attempt since the last success; drives auto-disable';
comment on column outbox.webhooks.rate_limit is 'Most requests per second to this webhook, over all workers; NULL: no limit';
comment on column outbox.webhooks.headers is
    'Extra request headers (receiver authentication), name -> value; values sealed like secrets (enc:v1:...) when OUTBOX_SECRET_KEYS is set; NULL: none';

-- The secret-free face of a webhook: what list/get return, and what the
-- read-only DBA role may see. Header names only, never their values.
create view outbox.webhook_info as
select id, owner_id, url, events, enabled, disabled_reason, created_at, updated_at,
       last_success_at, failing_since, rate_limit,
       coalesce((select array_agg(h.name order by lower(h.name))
                   from jsonb_object_keys(headers) h(name)), '{}') as header_names
  from outbox.webhooks;

-- ---------------------------------------------------------------- events (the outbox)
-- No CHECK on data: the emit trigger refuses a non-object first, with OW006,
-- and a CHECK is re-read from the catalogue at every statement.
create table outbox.events (
    id bigint generated always as identity primary key,
    owner_id text not null,
    event_type text not null,
    data jsonb not null,
    created_at timestamptz not null default clock_timestamp(),
    dispatched_at timestamptz,
    body bytea,
    -- Deliveries of one (webhook, ordering key) reach the receiver one at a
    -- time, in id order; NULL: no order.
    ordering_key text,
    idempotency_key text,
    -- The emitting code's W3C trace context (docs/tracing.md); NULL: none.
    traceparent text
);
-- The dispatcher's claim: oldest undispatched first. Tiny, because
-- dispatched rows leave it.
create index events_undispatched_idx on outbox.events (id) where dispatched_at is null;
-- The claim's look for an earlier event of a key that is not fanned out yet.
create index events_ordering_undispatched_idx on outbox.events (owner_id, ordering_key, id)
    where dispatched_at is null and ordering_key is not null;
comment on column outbox.events.body is
    'Exact bytes POSTed for this event, identical for every webhook and retry; written with the first recorded attempt (NULL while the first requests are in flight)';
comment on column outbox.events.ordering_key is
    'Events of one owner sharing an ordering key reach each webhook one at a time, in id order; NULL: unordered';
comment on column outbox.events.idempotency_key is
    'The key this event was emitted with (outbox.idempotency_keys decides duplicates); NULL: none';
comment on column outbox.events.traceparent is
    'W3C traceparent of the code that emitted this event: its deliveries join that trace; NULL: none, or malformed (dropped by the emit trigger)';

-- Idempotency keys: one row per (owner, key) for outbox.config.
-- idempotency_window, pointing at the event the first emit created. The emit
-- trigger inserts it with ON CONFLICT, so of two transactions emitting one
-- key the second waits for the first: it skips its event once the first
-- commits, and inserts it if the first rolls back. A table of its own, not a
-- unique index on events: the window is independent of how long purge keeps
-- events, and emits without a key pay nothing for it. Not a foreign key
-- either: a key outlives its event if purge removes the event first.
create table outbox.idempotency_keys (
    owner_id text not null,
    key text not null,
    event_id bigint not null,
    created_at timestamptz not null default now(),
    primary key (owner_id, key)
);
-- Purge's scan for expired keys.
create index idempotency_keys_created_idx on outbox.idempotency_keys (created_at);
comment on table outbox.idempotency_keys is
    'Idempotency keys within outbox.config.idempotency_window: a second emit with the key returns event_id';

-- lz4 instead of pglz for the payload and the body, where the server has it
-- (PostgreSQL 14+ built --with-lz4, as Debian's and the official images
-- are); elsewhere the server's default_toast_compression. A payload of more
-- than ~2 KB is compressed in the emitting transaction, and its body copy
-- again when the worker stores it: pglz took ~9% of PostgreSQL's time in a
-- drain of 4.3 KB events, lz4 gave the emitting transaction ~8% more tx/s
-- and the drain ~10% less CPU per delivery, at the same stored size
-- (docs/performance.md). Payloads under ~2 KB are not compressed either way.
do $$
begin
    if exists (select from pg_catalog.pg_settings
                where name = 'default_toast_compression' and 'lz4' = any (enumvals)) then
        alter table outbox.events
            alter column data set compression lz4,
            alter column body set compression lz4;
    end if;
end $$;

-- ---------------------------------------------------------------- deliveries
-- deliveries.event_id, deliveries.webhook_id and delivery_attempts.delivery_id
-- are not foreign keys. A key checks each inserted row with a query of its
-- own (a row trigger running SELECT ... FOR KEY SHARE on the parent), so
-- every delivery would pay two and every attempt one, in the worker's
-- hottest statements: without them a 20,000-event drain took 0.084 instead of 0.107
-- ms of PostgreSQL CPU per delivery (docs/performance.md). What the keys
-- guaranteed holds, batched ("Integrity without foreign keys" in
-- docs/dba.md, whose orphans query should always return nothing):
-- * a delivery's event exists: dispatch inserts deliveries only for events
--   it holds FOR UPDATE in the same statement, so nothing deletes them
--   meanwhile;
-- * a delivery's webhook exists: dispatch locks the batch's webhooks FOR KEY
--   SHARE (the foreign key's own lock), once per webhook and batch instead
--   of once per delivery. A webhook deleted meanwhile is skipped; a delete
--   that comes after waits for the dispatch to commit, and its cascade sees
--   the new deliveries;
-- * an attempt's delivery exists: complete_deliveries logs attempts for the
--   deliveries it updates (locked by the update) and locks the others FOR
--   KEY SHARE in one scan;
-- * deleting or truncating a parent removes its children, and a parent's id
--   cannot change: the triggers in "Integrity without foreign keys" below.
create type outbox.delivery_status as enum ('pending', 'delivered', 'failed');

create table outbox.deliveries (
    id bigint generated always as identity primary key,
    event_id bigint not null,
    webhook_id uuid not null,
    status outbox.delivery_status not null default 'pending',
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    leased_until timestamptz,
    leased_by text,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    last_status_code integer,
    last_error text,
    ordering_key text,  -- the event's, copied at fan-out for the claim's head check
    -- Fan-out is idempotent: a re-run dispatch cannot create a second row.
    constraint deliveries_webhook_event_key unique (webhook_id, event_id)
);
-- The sender's claim. A leased row stays 'pending' with next_attempt_at
-- pushed to the lease end, so an expired lease is simply due again: no
-- separate rescuer and one index for both.
create index deliveries_due_idx on outbox.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_failed_idx on outbox.deliveries (webhook_id, completed_at) where status = 'failed';
create index deliveries_event_idx on outbox.deliveries (event_id);
-- A keyed delivery is sent only while no earlier one of its (webhook, key)
-- is pending (in flight, or waiting for a retry): the claim's head check.
create index deliveries_ordering_idx on outbox.deliveries (webhook_id, ordering_key, event_id)
    where status = 'pending' and ordering_key is not null;
comment on column outbox.deliveries.attempts is 'Attempts logged in the current round (outbox.redeliver starts a new round)';
comment on column outbox.deliveries.event_id is
    'outbox.events.id (kept by dispatch and a delete cascade, not a foreign key: docs/dba.md)';
comment on column outbox.deliveries.webhook_id is
    'outbox.webhooks.id (kept by dispatch and a delete cascade, not a foreign key: docs/dba.md)';

-- error_class "invalid_payload": the worker's JSON reader refused the event's
-- payload, so nothing was sent. emit refuses such payloads; this covers rows
-- written around the emit trigger.
create table outbox.delivery_attempts (
    id bigint generated always as identity primary key,
    delivery_id bigint not null,
    attempt integer not null,
    attempted_at timestamptz not null,
    duration_ms double precision not null,
    status_code integer,
    error_class text check (
        error_class in ('http', 'timeout', 'connection', 'dns', 'invalid_target', 'redirect', 'invalid_payload')
    ),
    error text,
    response_body text,
    worker_id text
);
create index delivery_attempts_delivery_idx on outbox.delivery_attempts (delivery_id);
comment on column outbox.delivery_attempts.delivery_id is
    'outbox.deliveries.id (kept by complete_deliveries and a delete cascade, not a foreign key: docs/dba.md)';

-- ---------------------------------------------------------------- integrity without foreign keys
-- One function for the three cascades: the trigger's arguments name the
-- child table and its column. AFTER DELETE statement triggers with
-- transition tables make one set-based DELETE per statement (a foreign
-- key's cascade is one DELETE per parent row). "= any(array(...))": an
-- index lookup per deleted parent, whatever the planner thinks of a
-- transition table's size. The trigger functions run as their owner, like a
-- key's cascade, so whoever may delete a webhook removes its history too.
create function outbox.cascade_delete() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    execute format('delete from outbox.%I c where c.%I = any (array(select gone.id from gone))',
                   tg_argv[0], tg_argv[1]);
    return null;
end $$;

-- A truncated parent leaves no child behind: events and webhooks take the
-- deliveries with them, deliveries their attempts (through the delete
-- trigger). DELETE, not TRUNCATE: a child truncated by the same statement
-- (TRUNCATE events, deliveries, ...) is still open in it, and TRUNCATE
-- refuses it; it is empty by now, so the DELETE costs nothing.
create function outbox.cascade_truncate() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name = 'deliveries' then
        delete from outbox.delivery_attempts;
    else
        delete from outbox.deliveries;
    end if;
    -- Event ids may start again (RESTART IDENTITY): keys must not name them.
    if tg_table_name = 'events' then
        delete from outbox.idempotency_keys;
    end if;
    return null;
end $$;

revoke execute on function outbox.cascade_delete(), outbox.cascade_truncate() from public;
comment on function outbox.cascade_delete() is
    'Deletes the rows of table TG_ARGV[0] whose column TG_ARGV[1] names a deleted row (in place of a foreign key)';
comment on function outbox.cascade_truncate() is 'Empties the children of a truncated outbox table';

create trigger events_cascade after delete on outbox.events
    referencing old table as gone for each statement
    execute function outbox.cascade_delete('deliveries', 'event_id');
create trigger webhooks_cascade after delete on outbox.webhooks
    referencing old table as gone for each statement
    execute function outbox.cascade_delete('deliveries', 'webhook_id');
create trigger deliveries_cascade after delete on outbox.deliveries
    referencing old table as gone for each statement
    execute function outbox.cascade_delete('delivery_attempts', 'delivery_id');
create trigger events_cascade_truncate after truncate on outbox.events
    for each statement execute function outbox.cascade_truncate();
create trigger webhooks_cascade_truncate after truncate on outbox.webhooks
    for each statement execute function outbox.cascade_truncate();
create trigger deliveries_cascade_truncate after truncate on outbox.deliveries
    for each statement execute function outbox.cascade_truncate();

-- Nothing in the product changes an id, but a statement by hand (UPDATE
-- outbox.webhooks SET id = ..., or SET id = DEFAULT on events and
-- deliveries, the one change their GENERATED ALWAYS identity allows) would
-- orphan every delivery and attempt below the row; a foreign key's NO
-- ACTION would have refused it. A statement-level trigger refuses such an
-- UPDATE before it touches a row. It fires only for an UPDATE that names
-- "id" among its targets (PostgreSQL checks the column list once per
-- statement), so the worker's updates, which never do, pay one check per
-- statement, where a row-level trigger is considered for every row they
-- update.
create function outbox.refuse_id_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'outbox.%.id cannot be changed: the rows below it refer to it', tg_table_name
        using errcode = 'OW011',
              hint = case tg_table_name
                         when 'webhooks' then 'create a new webhook (outbox.create_webhook) and delete the old one'
                         else 'ids are assigned once, at insert' end;
end $$;
comment on function outbox.refuse_id_change() is
    'Refuses an UPDATE that names id on events, webhooks or deliveries (children refer to it)';

create trigger events_id_fixed before update of id on outbox.events
    for each statement execute function outbox.refuse_id_change();
create trigger webhooks_id_fixed before update of id on outbox.webhooks
    for each statement execute function outbox.refuse_id_change();
create trigger deliveries_id_fixed before update of id on outbox.deliveries
    for each statement execute function outbox.refuse_id_change();

-- ---------------------------------------------------------------- API keys
-- Credentials of the management HTTP API (X-Api-Key).
-- A key is a prefix plus 32 random bytes in hex, so an unsalted SHA-256 is
-- enough: there is no dictionary to try. Only the hash is stored; the key
-- itself exists once, in the answer of create_api_key().
create table outbox.api_keys (
    id uuid primary key default gen_random_uuid(),
    owner_id text not null,
    key_hash bytea not null unique check (octet_length(key_hash) = 32),
    display_prefix text not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    operator boolean not null default false
);
create index api_keys_owner_idx on outbox.api_keys (owner_id);
comment on column outbox.api_keys.operator is
    'An operator key: the console shows and manages every owner''s webhooks (the HTTP API still acts for owner_id)';
comment on table outbox.api_keys is 'X-Api-Key credentials of the management API: SHA-256 of each key, never the key';
comment on column outbox.api_keys.display_prefix is 'First characters of the key, to tell keys apart; not enough to use it';

-- The hash-free face of a key, for listings and the read-only DBA role.
create view outbox.api_key_info as
select id, owner_id, display_prefix, created_at, revoked_at
  from outbox.api_keys;

-- ---------------------------------------------------------------- maintenance (retention)
-- Who runs a maintenance task now: one row per task, claimed by a worker
-- while expires_at has passed (UPDATE ... RETURNING) and renewed by each of
-- its batches. A row, not an advisory lock: a session-level lock cannot
-- live behind a transaction-mode pooler, and the row shows who holds it.
-- Each batch renews it first, in its own transaction, so two workers'
-- batches never run at once: the second's claim waits for the row lock and
-- then finds the lease renewed.
create table outbox.maintenance_leases (
    name text primary key,
    holder text,
    acquired_at timestamptz,
    expires_at timestamptz  -- NULL: never held
);
insert into outbox.maintenance_leases (name) values ('retention');
comment on table outbox.maintenance_leases is
    'Maintenance tasks the workers elect one runner for (retention): who holds each and until when';

-- One row per retention pass: who ran it, from the claim to the end of its
-- last batch, and what it removed. The passes trim it to a week.
create table outbox.maintenance_runs (
    id bigint generated always as identity primary key,
    name text not null,
    holder text not null,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    batches integer not null,
    events bigint not null,
    deliveries bigint not null,
    attempts bigint not null,
    idempotency_keys bigint not null
);
create index maintenance_runs_finished_idx on outbox.maintenance_runs (finished_at);
comment on table outbox.maintenance_runs is
    'Retention passes of the last week: holder, start (lease claimed) and end (last batch), rows removed';

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

-- One row per delivery with its attempts as a JSON array, newest attempt
-- last. The attempts subquery runs only for the rows a caller selects.
create view outbox.delivery_info as
select d.id,
       d.webhook_id,
       w.owner_id,
       d.event_id,
       e.event_type,
       d.status,
       d.attempts,
       d.created_at,
       d.next_attempt_at,
       d.completed_at,
       d.last_status_code,
       d.last_error,
       coalesce((select jsonb_agg(jsonb_build_object(
                            'attempt', a.attempt,
                            'attempted_at', a.attempted_at,
                            'duration_ms', a.duration_ms,
                            'status_code', a.status_code,
                            'error_class', a.error_class,
                            'error', a.error,
                            'response_body', a.response_body)
                        order by a.id)
                   from outbox.delivery_attempts a
                  where a.delivery_id = d.id), '[]'::jsonb) as attempt_log
  from outbox.deliveries d
  join outbox.webhooks w on w.id = d.webhook_id
  join outbox.events e on e.id = d.event_id;
comment on view outbox.delivery_info is 'One row per delivery with its attempts (JSON array), as the management API shows it';

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
-- itself. Fan-out uses it with the array overlap operator; dispatch calls it
-- once per claimed event. plpgsql without a SET clause: as a SQL function
-- with "set search_path" it could not be inlined, paid a GUC save/restore
-- per call and planned its body again in every statement that called it
-- (~8 us per event instead of ~3 us). plpgsql caches its expressions per
-- session. Every function and operator is named by schema, so the caller's
-- search_path cannot redirect it.
--
-- It refuses what is no event type or pattern before any work: its cost
-- grows with the square of its input's dots (a 40 KB filter from the API
-- took 7-14 s of database CPU), and event types are at most 100 characters.
create function outbox.event_patterns(p_event_type text) returns text[]
language plpgsql immutable parallel safe
as $$
declare
    parts text[];
    patterns text[];
begin
    if pg_catalog.length(p_event_type) > 100
       or p_event_type operator(pg_catalog.!~) '^(\*|[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(\.\*)?)$' then
        raise exception 'invalid event type: use at most 100 letters, digits, "_", "-" and dots, like "order.created" or "order.*"'
            using errcode = 'OW009';
    end if;
    parts := pg_catalog.string_to_array(p_event_type, '.');
    patterns := array['*', p_event_type];
    -- 'a.b.c' also matches 'a.*' and 'a.b.*'.
    for n in 1 .. coalesce(pg_catalog.cardinality(parts), 1) - 1 loop
        patterns := patterns operator(pg_catalog.||)
                    (pg_catalog.array_to_string(parts[1:n], '.') operator(pg_catalog.||) '.*');
    end loop;
    return patterns;
end $$;

create function outbox.check_events(p_events text[]) returns text[]
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    e text;
    result text[] := '{}';
begin
    if p_events is null or cardinality(p_events) = 0 then
        raise exception 'events must list at least one event type' using errcode = 'OW013';
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

-- Generated by `python -m outbox_worker.ranges` from outbox_worker/ranges.py,
-- the table the worker's send-time check reads too; do not edit by hand.
create function outbox.address_kind(p_addr inet) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select r.kind
      from (values
        ('0.0.0.0/8'::cidr, 'local'),
        ('10.0.0.0/8'::cidr, 'local'),
        ('100.64.0.0/10'::cidr, 'local'),
        ('100.100.100.200/32'::cidr, 'never'),
        ('127.0.0.0/8'::cidr, 'local'),
        ('169.254.0.0/16'::cidr, 'never'),
        ('172.16.0.0/12'::cidr, 'local'),
        ('192.0.0.0/24'::cidr, 'reserved'),
        ('192.0.0.0/29'::cidr, 'reserved'),
        ('192.0.0.8/32'::cidr, 'reserved'),
        ('192.0.0.9/32'::cidr, 'global'),
        ('192.0.0.10/32'::cidr, 'global'),
        ('192.0.0.170/31'::cidr, 'reserved'),
        ('192.0.0.192/32'::cidr, 'never'),
        ('192.0.2.0/24'::cidr, 'reserved'),
        ('192.31.196.0/24'::cidr, 'global'),
        ('192.52.193.0/24'::cidr, 'global'),
        ('192.88.99.0/24'::cidr, 'reserved'),
        ('192.168.0.0/16'::cidr, 'local'),
        ('192.175.48.0/24'::cidr, 'global'),
        ('198.18.0.0/15'::cidr, 'reserved'),
        ('198.51.100.0/24'::cidr, 'reserved'),
        ('203.0.113.0/24'::cidr, 'reserved'),
        ('224.0.0.0/4'::cidr, 'reserved'),
        ('240.0.0.0/4'::cidr, 'reserved'),
        ('255.255.255.255/32'::cidr, 'reserved'),
        ('::/0'::cidr, 'reserved'),
        ('::/96'::cidr, 'reserved'),
        ('::/128'::cidr, 'local'),
        ('::1/128'::cidr, 'local'),
        ('::ffff:0:0/96'::cidr, 'embedded'),
        ('::ffff:0:0:0/96'::cidr, 'reserved'),
        ('64:ff9b::/96'::cidr, 'embedded'),
        ('64:ff9b:1::/48'::cidr, 'reserved'),
        ('100::/64'::cidr, 'reserved'),
        ('100:0:0:1::/64'::cidr, 'reserved'),
        ('2000::/3'::cidr, 'global'),
        ('2001::/23'::cidr, 'reserved'),
        ('2001::/32'::cidr, 'reserved'),
        ('2001:1::1/128'::cidr, 'global'),
        ('2001:1::2/128'::cidr, 'global'),
        ('2001:1::3/128'::cidr, 'global'),
        ('2001:2::/48'::cidr, 'reserved'),
        ('2001:3::/32'::cidr, 'global'),
        ('2001:4:112::/48'::cidr, 'global'),
        ('2001:10::/28'::cidr, 'reserved'),
        ('2001:20::/28'::cidr, 'global'),
        ('2001:30::/28'::cidr, 'global'),
        ('2001:db8::/32'::cidr, 'reserved'),
        ('2002::/16'::cidr, 'reserved'),
        ('2620:4f:8000::/48'::cidr, 'global'),
        ('3fff::/20'::cidr, 'reserved'),
        ('5f00::/16'::cidr, 'reserved'),
        ('fc00::/7'::cidr, 'local'),
        ('fd00:ec2::254/128'::cidr, 'never'),
        ('fe80::/10'::cidr, 'never'),
        ('fec0::/10'::cidr, 'reserved'),
        ('ff00::/8'::cidr, 'reserved')
      ) as r(network, kind)
     where p_addr <<= r.network
     order by masklen(r.network) desc
     limit 1
$$;

-- Why an address is refused: 'never' (link-local, cloud metadata),
-- 'local' (loopback, private networks: open only in development,
-- p_allow_private) or 'reserved' (anything else not globally reachable); NULL
-- when a webhook may reach it. An IPv4-mapped or NAT64 address is judged by
-- the IPv4 address it carries. The worker applies the same table at send time.
create function outbox.address_refusal(p_addr inet, p_allow_private boolean) returns text
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := outbox.address_kind(p_addr);
begin
    if v_kind = 'embedded' then
        return outbox.address_refusal('0.0.0.0'::inet + (p_addr - network(set_masklen(p_addr, 96))),
                                      p_allow_private);
    end if;
    if v_kind is null or v_kind = 'global' or (v_kind = 'local' and p_allow_private) then
        return null;
    end if;
    return v_kind;
end $$;

-- True for addresses a webhook must never reach in production.
create function outbox.is_blocked_address(p_addr inet) returns boolean
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select outbox.address_refusal(p_addr, false) is not null
$$;

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
        raise exception 'invalid URL: credentials (user:password@) in the URL are not allowed'
            using errcode = 'OW003',
                  hint = 'send them as a header instead: headers => ''{"Authorization": "Basic <base64 of user:password>"}''';
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
end $$;


-- ---------------------------------------------------------------- emit trigger and wake-up
-- One row trigger validates every insert, so a plain INSERT from the app is
-- as safe as emit(), and wakes workers. It runs inside every business
-- transaction that emits, so it is lean: the catalogue (event type names,
-- max_payload_bytes) and config.notify are compiled into the trigger
-- function as constants, so a valid event costs no query; the size is the
-- stored (jsonb) size, not a re-serialisation; there is no SET clause (a
-- per-call GUC save/restore that defeats plan caching), and no CHECK
-- constraint or second trigger per statement. Measured (pgbench, 8 clients,
-- a worker holding "busy"; PostgreSQL CPU per transaction above a plain
-- one-insert transaction): an emit fused into the business INSERT costs
-- +64-99 us, against +112-144 us for a trigger that looked the catalogue up
-- (docs/performance.md). It runs as the caller and names every object by
-- schema, so the caller's search_path cannot redirect it.
--
-- A statement trigger compiles it again whenever outbox.event_types or
-- outbox.config change: CREATE OR REPLACE FUNCTION is transactional, and
-- every session sees the new body at its next statement after the change
-- commits, without the events table being locked. The compiled constants
-- are only a fast path: a type missing from them, or a payload above the
-- compiled limit, is checked against the tables themselves, so a copy
-- compiled a moment too early (two catalogue changes at once at REPEATABLE
-- READ) can never reject what the tables accept.
--
-- Payload limits (OW012): jsonb that PostgreSQL stores but receivers' JSON
-- readers (and the worker's) cannot read, values nested more than 100
-- objects or arrays deep and numbers beyond +/-1e308, is refused. Two
-- jsonpath walks of the payload: ~0.5 us (depth) and ~1.7 us (numbers) for
-- a 230-byte payload here.
--
-- Quiet NOTIFY: an emitting transaction notifies only when no worker is
-- already draining the outbox. At commit, a transaction that issued NOTIFY
-- takes a database-wide lock held until its commit record is flushed
-- (async.c, PreCommit_Notify), so notifying transactions commit one at a
-- time and group commit is lost; under load a worker is awake anyway and a
-- notification wakes nobody. Two advisory locks:
--   (1869968482, 2) "busy": a worker holds it (session-level, exclusive) while
--       it drains. Emitters only try it, shared, and let go at once: if they
--       get it, no worker is busy and they notify.
--   (1869968482, 1) "in flight": every emitting statement holds it shared
--       until its transaction ends. A busy worker may stop being busy only
--       once it gets this lock exclusively (it only tries, never waits, so an
--       emitter is never blocked by more than that one statement), i.e. when
--       no emitter that may have skipped its NOTIFY is still uncommitted; its
--       next claim then sees all their events.
-- Locks are not snapshots, so this holds at every isolation level, and a
-- worker that dies drops "busy" with its connection: emitters notify again.
-- The payload is empty: a notification only wakes workers; they read the
-- table.
--
-- compile_emit_trigger() writes outbox.events_emit() from the tables.
-- SECURITY DEFINER: whoever may change the catalogue may have it
-- recompiled, not write functions. The advisory lock (1869968482, 3)
-- serialises two recompiles; the second then reads what the first
-- committed (each statement takes a new snapshot at READ COMMITTED).
create function outbox.compile_emit_trigger() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $compile$
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
    end if;
    -- The keys cost an event without them two NULL tests.
    if new.ordering_key is not null
       and (pg_catalog.length(new.ordering_key) not between 1 and 255 or new.ordering_key ~ '[[:cntrl:]]') then
        raise exception 'invalid ordering key: must be 1-255 characters, no control characters' using errcode = 'OW030';
    end if;
    -- A malformed trace context is dropped, never refused: tracing must not
    -- fail the business transaction, and the event then gets a trace of its
    -- own (W3C: a traceparent that does not parse starts a new trace). Loose:
    -- any version but ff, hex in either case, fields past the fourth cut off.
    if new.traceparent is not null then
        if new.traceparent ~ '^[0-9A-Fa-f]{2}-[0-9A-Fa-f]{32}-[0-9A-Fa-f]{16}-[0-9A-Fa-f]{2}(-|$)'
           and pg_catalog.lower(pg_catalog.left(new.traceparent, 2)) <> 'ff'
           and pg_catalog.substr(new.traceparent, 4, 32) <> '00000000000000000000000000000000'
           and pg_catalog.substr(new.traceparent, 37, 16) <> '0000000000000000' then
            new.traceparent := pg_catalog.lower(pg_catalog.left(new.traceparent, 55));
        else
            new.traceparent := null;
        end if;
    end if;
    if new.idempotency_key is not null then
        if pg_catalog.length(new.idempotency_key) not between 1 and 255 or new.idempotency_key ~ '[[:cntrl:]]' then
            raise exception 'invalid idempotency key: must be 1-255 characters, no control characters'
                using errcode = 'OW031';
        end if;
        -- Last, once the event is known to be valid. The key's row decides
        -- (outbox.idempotency_keys): a key held by an uncommitted transaction
        -- makes this INSERT wait for it; a live key skips this event (the
        -- trigger returns NULL: nothing is inserted, nobody is woken), an
        -- expired one (purge has not run yet) is taken over. The window is
        -- read only on a conflict.
        insert into outbox.idempotency_keys as k (owner_id, key, event_id)
        values (new.owner_id, new.idempotency_key, new.id)
        on conflict (owner_id, key) do update
           set event_id = excluded.event_id, created_at = excluded.created_at
         where k.created_at < pg_catalog.now() - (select c.idempotency_window from outbox.config c);
        if not found then
            return null;
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
end $compile$;
revoke execute on function outbox.compile_emit_trigger() from public;
comment on function outbox.compile_emit_trigger() is
    'Recompiles outbox.events_emit() when outbox.event_types or outbox.config change';

create trigger event_types_compile after insert or update or delete or truncate on outbox.event_types
    for each statement execute function outbox.compile_emit_trigger();
create trigger config_compile after update on outbox.config
    for each statement execute function outbox.compile_emit_trigger();

-- Compile it once now (fires config_compile), then attach it.
update outbox.config set notify = notify;
create trigger events_emit before insert on outbox.events
    for each row execute function outbox.events_emit();

-- A worker's way out of "busy": true when it let go of it, false when an
-- emitting transaction is still in flight (the caller keeps polling). The
-- exclusive "in flight" lock is transaction-level, so it cannot outlive this
-- call, not even on an error.
create function outbox.release_busy() returns boolean
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not pg_try_advisory_xact_lock(1869968482, 1) then
        return false;
    end if;
    perform pg_advisory_unlock(1869968482, 2);
    return true;
end $$;
comment on function outbox.release_busy() is
    'Worker: stop suppressing NOTIFY, once no emitter that skipped it is uncommitted';

-- ---------------------------------------------------------------- SQL API: events and webhooks
-- plpgsql (not SQL) so the INSERT's plan is cached per session, and no SET
-- clause, for the same reason as the emit trigger: this is the app's hot path.
-- A duplicate idempotency key inserts nothing (the trigger skips the row);
-- the id is then the first event's, read after the trigger's INSERT has
-- waited for the transaction that holds the key (a new snapshot at READ
-- COMMITTED sees its commit; at REPEATABLE READ or above the trigger's
-- INSERT fails with a serialization error instead, and a retry sees it).
create function outbox.emit(owner_id text, event_type text, data jsonb, ordering_key text default null,
                            idempotency_key text default null, traceparent text default null) returns bigint
language plpgsql volatile
as $$
declare
    new_id bigint;
begin
    insert into outbox.events (owner_id, event_type, data, ordering_key, idempotency_key, traceparent)
    values (emit.owner_id, emit.event_type, emit.data, emit.ordering_key, emit.idempotency_key,
            emit.traceparent)
    returning id into new_id;
    if new_id is null then
        select k.event_id into new_id
          from outbox.idempotency_keys k
         where k.owner_id = emit.owner_id and k.key = emit.idempotency_key;
    end if;
    return new_id;
end $$;
comment on function outbox.emit(text, text, jsonb, text, text, text) is
    'Queue an event in the caller''s transaction; returns the event id (the first event''s for a repeated idempotency key); traceparent: the caller''s W3C trace context';

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

-- Custom request headers of a webhook, for receiver authentication
-- (Authorization: Bearer ..., or Basic): a JSON object of names to string
-- values; '{}' means none (stored as NULL). A value arrives either sealed
-- (enc:v1:..., from a caller holding OUTBOX_SECRET_KEYS, which checks the
-- plaintext itself) or in plaintext (from SQL; the worker seals it within
-- seconds when it has the keys). Names the worker sets itself are refused,
-- whatever their case (OW032): the signature headers, webhook-*, and those
-- that frame or route the request.
create function outbox.check_headers(p_headers jsonb) returns jsonb
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    h record;
    v_name text;
    v_seen text[] := '{}';
    v_value text;
begin
    if p_headers is null then
        return null;
    end if;
    if jsonb_typeof(p_headers) <> 'object' then
        raise exception 'invalid headers: expected a JSON object of header names to values, got %',
            jsonb_typeof(p_headers) using errcode = 'OW033';
    end if;
    if (select count(*) from jsonb_object_keys(p_headers)) > 20 then
        raise exception 'invalid headers: at most 20 headers per webhook' using errcode = 'OW033';
    end if;
    for h in select e.key, e.value from jsonb_each(p_headers) e loop
        v_name := lower(h.key);
        if h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]{1,100}$' then
            raise exception 'invalid header name "%": 1-100 letters, digits or !#$%%&''*+.^_`|~-', h.key
                using errcode = 'OW033';
        end if;
        if v_name in ('host', 'content-length', 'content-type', 'content-encoding', 'transfer-encoding',
                      'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect', 'user-agent',
                      'traceparent', 'tracestate', 'x-brutlers-signature', 'x-brutlers-signature-previous')
           or v_name like 'webhook-%' or v_name like 'proxy-%' then
            raise exception 'header "%" is reserved: the worker sets it', h.key
                using errcode = 'OW032',
                      hint = 'reserved: the signature headers, webhook-*, Host, Content-Type, -Length, -Encoding, User-Agent, traceparent, tracestate and hop-by-hop headers';
        end if;
        if v_name = any (v_seen) then
            raise exception 'invalid headers: "%" appears twice (names ignore case)', h.key using errcode = 'OW033';
        end if;
        v_seen := v_seen || v_name;
        if jsonb_typeof(h.value) <> 'string' then
            raise exception 'invalid value of header "%": expected a string, got %', h.key, jsonb_typeof(h.value)
                using errcode = 'OW033';
        end if;
        v_value := h.value #>> '{}';
        if starts_with(v_value, 'enc:v1:') then
            if v_value !~ '^enc:v1:[A-Za-z0-9_=-]+$' or length(v_value) > 8192 then
                raise exception 'invalid value of header "%": not a sealed value (enc:v1:...)', h.key
                    using errcode = 'OW033';
            end if;
        elsif v_value !~ '^[ -~]+$' or length(v_value) > 4096 or v_value <> btrim(v_value) then
            raise exception 'invalid value of header "%": 1-4096 printable ASCII characters, no surrounding spaces', h.key
                using errcode = 'OW033';
        end if;
    end loop;
    return nullif(p_headers, '{}');
end $$;

-- Requests per second, over all workers. 0 (or NULL at create) is no limit.
create function outbox.check_rate_limit(p_rate_limit numeric) returns numeric
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_rate_limit is null or p_rate_limit = 0 then
        return null;
    end if;
    -- NaN and Infinity sort above every number: refused here too.
    if not (p_rate_limit >= 0.01 and p_rate_limit <= 10000) then
        raise exception 'invalid rate limit %: requests per second from 0.01 to 10000 (0 removes the limit)',
            p_rate_limit using errcode = 'OW034';
    end if;
    return p_rate_limit;
end $$;

create function outbox.create_webhook(owner_id text, url text, events text[], sealed_secret text default null,
                                      rate_limit numeric default null, headers jsonb default null)
returns table (id uuid, secret text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit integer;
    v_count integer;
    v_events text[];
    v_url text;
    v_rate_limit numeric;
    v_headers jsonb;
begin
    perform outbox.check_owner_id(create_webhook.owner_id);
    v_url := outbox.check_url(create_webhook.url);
    v_events := outbox.check_events(create_webhook.events);
    v_rate_limit := outbox.check_rate_limit(create_webhook.rate_limit);
    v_headers := outbox.check_headers(create_webhook.headers);
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
        insert into outbox.webhooks as w (owner_id, url, events, secret, rate_limit, headers)
        values (create_webhook.owner_id, v_url, v_events,
                coalesce(outbox.check_sealed_secret(create_webhook.sealed_secret), outbox.new_secret()),
                v_rate_limit, v_headers)
        returning w.id, w.secret;
end $$;

-- Locks its row FOR NO KEY UPDATE, the lock its own UPDATE takes anyway:
-- FOR UPDATE would conflict with the FOR KEY SHARE that dispatch takes on
-- the webhooks of a batch, so a caller holding its transaction open after
-- update_webhook() would stop every worker's dispatch, for every owner in
-- the batch, until it ended. Two updates of one webhook still take turns,
-- and delete_webhook() still waits for a dispatch in progress.
-- rate_limit 0 removes the limit; headers replace the whole set ('{}'
-- removes them all): their values are never shown, so there is nothing to
-- merge with.
create function outbox.update_webhook(owner_id text, webhook_id uuid, url text default null,
                                      events text[] default null, enabled boolean default null,
                                      rate_limit numeric default null, headers jsonb default null)
returns setof outbox.webhook_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_url text;
    v_events text[];
    v_was_enabled boolean;
    v_rate_limit numeric;
    v_headers jsonb;
begin
    perform outbox.check_owner_id(update_webhook.owner_id);
    if update_webhook.url is not null then
        v_url := outbox.check_url(update_webhook.url);
    end if;
    if update_webhook.events is not null then
        v_events := outbox.check_events(update_webhook.events);
    end if;
    v_rate_limit := outbox.check_rate_limit(update_webhook.rate_limit);
    v_headers := outbox.check_headers(update_webhook.headers);
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
    update outbox.webhooks w
       set url = coalesce(v_url, w.url),
           events = coalesce(v_events, w.events),
           enabled = coalesce(update_webhook.enabled, w.enabled),
           disabled_reason = case when update_webhook.enabled is null then w.disabled_reason
                                  when update_webhook.enabled then null
                                  else 'disabled by owner' end,
           failing_since = case when update_webhook.enabled then null else w.failing_since end,
           rate_limit = case when update_webhook.rate_limit is null then w.rate_limit else v_rate_limit end,
           headers = case when update_webhook.headers is null then w.headers else v_headers end,
           updated_at = now()
     where w.id = update_webhook.webhook_id;
    return query select i.* from outbox.webhook_info i where i.id = update_webhook.webhook_id;
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

-- One signed webhook.test event for one webhook: the event is inserted
-- already dispatched, so the dispatcher never fans it out to the owner's
-- other webhooks, and its one delivery is queued here. The worker encodes
-- its body when it claims it, as for any delivery whose body is not stored
-- yet. FOR KEY SHARE on the webhook, the lock dispatch takes: a delete that
-- comes meanwhile waits, and its cascade removes this delivery too.
create function outbox.send_test_event(owner_id text, webhook_id uuid) returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_url text;
    v_enabled boolean;
    v_event_id bigint;
    v_delivery_id bigint;
begin
    perform outbox.check_owner_id(send_test_event.owner_id);
    select w.url, w.enabled into v_url, v_enabled
      from outbox.webhooks w
     where w.id = send_test_event.webhook_id and w.owner_id = send_test_event.owner_id
       for key share;
    if not found then
        raise exception 'webhook % not found', send_test_event.webhook_id using errcode = 'OW005';
    end if;
    if not v_enabled then
        raise exception 'webhook % is disabled: a test event would not be sent', send_test_event.webhook_id
            using errcode = 'OW035', hint = 'enable it first (update_webhook ... enabled => true)';
    end if;
    insert into outbox.events (owner_id, event_type, data, dispatched_at)
    values (send_test_event.owner_id, 'webhook.test',
            jsonb_build_object('webhook_id', send_test_event.webhook_id, 'url', v_url,
                               'message', 'A test event: your endpoint receives webhooks.'),
            now())
    returning id into v_event_id;
    insert into outbox.deliveries as d (event_id, webhook_id)
    values (v_event_id, send_test_event.webhook_id)
    returning d.id into v_delivery_id;
    -- Wake a sender now rather than at its next poll (sent at commit).
    perform pg_notify('outbox_events', 'deliveries');
    return v_delivery_id;
end $$;
comment on function outbox.send_test_event(text, uuid) is
    'Queue one signed webhook.test event for one webhook alone; returns the delivery id';

-- Ends a rotation's overlap now: the previous secret stops signing at once
-- and is erased (after a leak, say). The worker also erases every previous
-- secret whose overlap has ended (maintenance.SecretExpirer).
create function outbox.expire_previous_secret(owner_id text, webhook_id uuid) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(expire_previous_secret.owner_id);
    update outbox.webhooks w
       set previous_secret = null, previous_secret_expires_at = null, updated_at = now()
     where w.id = expire_previous_secret.webhook_id and w.owner_id = expire_previous_secret.owner_id;
    if not found then
        raise exception 'webhook % not found', expire_previous_secret.webhook_id using errcode = 'OW005';
    end if;
end $$;
comment on function outbox.expire_previous_secret(text, uuid) is
    'End a secret rotation''s overlap now: the previous secret stops signing and is erased';

-- Starts a new round of attempts for one delivery of the owner's (keeping
-- its webhook-id, so receivers can deduplicate). A delivery in flight is left
-- to finish. The owner is required: NULL once meant "any owner", and one
-- owner's caller re-queued another's delivery; an operator's call across
-- owners is outbox.redeliver_any_owner, whose name says so.
create function outbox.redeliver(delivery_id bigint, owner_id text) returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(redeliver.owner_id);
    return outbox.restart_delivery(redeliver.delivery_id, redeliver.owner_id);
end $$;
comment on function outbox.redeliver(bigint, text) is
    'Start a new round of attempts for one delivery of an owner''s webhook (same webhook-id); returns its id';

create function outbox.redeliver_any_owner(delivery_id bigint) returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    return outbox.restart_delivery(redeliver_any_owner.delivery_id, null);
end $$;
comment on function outbox.redeliver_any_owner(bigint) is
    'Operators: outbox.redeliver for a delivery of any owner''s webhook';

-- What both share. p_owner_id NULL means any owner: kept off the public
-- names, and not granted to PUBLIC.
create function outbox.restart_delivery(p_delivery_id bigint, p_owner_id text) returns bigint
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
     where d.id = p_delivery_id and w.id = d.webhook_id
       and (p_owner_id is null or w.owner_id = p_owner_id)
       and (d.leased_until is null or d.leased_until <= now())
    returning d.id into v_id;
    if v_id is null then
        if exists (select 1 from outbox.deliveries d join outbox.webhooks w on w.id = d.webhook_id
                    where d.id = p_delivery_id
                      and (p_owner_id is null or w.owner_id = p_owner_id)) then
            return p_delivery_id;  -- in flight right now: it is being delivered
        end if;
        raise exception 'delivery % not found', p_delivery_id using errcode = 'OW008';
    end if;
    return v_id;
end $$;
revoke execute on function outbox.restart_delivery(bigint, text) from public;

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

-- ---------------------------------------------------------------- SQL API: API keys
create function outbox.create_api_key(owner_id text, prefix text default 'brut_', operator boolean default false)
returns table (id uuid, key text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key text;
begin
    perform outbox.check_owner_id(create_api_key.owner_id);
    -- The key travels in an HTTP header: keep the prefix to header-safe characters.
    if create_api_key.prefix is null or create_api_key.prefix !~ '^[A-Za-z0-9_-]{0,32}$' then
        raise exception 'invalid API key prefix: use at most 32 letters, digits, "_" or "-"'
            using errcode = 'OW021';
    end if;
    v_key := create_api_key.prefix || encode(outbox.random_bytes_32(), 'hex');
    return query
        insert into outbox.api_keys as k (owner_id, key_hash, display_prefix, operator)
        values (create_api_key.owner_id, sha256(convert_to(v_key, 'UTF8')),
                left(v_key, length(create_api_key.prefix) + 8), coalesce(create_api_key.operator, false))
        returning k.id, v_key;
end $$;
comment on function outbox.create_api_key(text, text, boolean) is
    'Issue an API key for an owner (an operator key with operator => true); the only time the key is returned';

-- Takes the hash, not the key, so the key never reaches the server's
-- statement log. From psql: outbox.api_key_owner(sha256(convert_to(key, 'UTF8'))).
create function outbox.api_key_owner(key_hash bytea) returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select k.owner_id from outbox.api_keys k
     where k.key_hash = api_key_owner.key_hash and k.revoked_at is null
$$;
comment on function outbox.api_key_owner(bytea) is 'Owner of the live API key with this SHA-256, or NULL';

create function outbox.list_api_keys(owner_id text) returns setof outbox.api_key_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(list_api_keys.owner_id);
    return query
        select k.* from outbox.api_key_info k
         where k.owner_id = list_api_keys.owner_id
         order by k.created_at, k.id;
end $$;

-- Idempotent: revoking a revoked key keeps its first revocation time. The
-- owner is required (see redeliver); operators revoke any owner's key with
-- outbox.revoke_api_key_any_owner.
create function outbox.revoke_api_key(key_id uuid, owner_id text)
returns setof outbox.api_key_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(revoke_api_key.owner_id);
    return query select * from outbox.end_api_key(revoke_api_key.key_id, revoke_api_key.owner_id);
end $$;
comment on function outbox.revoke_api_key(uuid, text) is 'Revoke one of an owner''s API keys (idempotent)';

create function outbox.revoke_api_key_any_owner(key_id uuid)
returns setof outbox.api_key_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    return query select * from outbox.end_api_key(revoke_api_key_any_owner.key_id, null);
end $$;
comment on function outbox.revoke_api_key_any_owner(uuid) is
    'Operators: outbox.revoke_api_key for a key of any owner';

-- What both share; p_owner_id NULL means any owner (not granted to PUBLIC).
create function outbox.end_api_key(p_key_id uuid, p_owner_id text)
returns setof outbox.api_key_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    return query
        update outbox.api_keys k
           set revoked_at = coalesce(k.revoked_at, now())
         where k.id = p_key_id
           and (p_owner_id is null or k.owner_id = p_owner_id)
        returning k.id, k.owner_id, k.display_prefix, k.created_at, k.revoked_at;
    if not found then
        raise exception 'API key % not found', p_key_id using errcode = 'OW020';
    end if;
end $$;
revoke execute on function outbox.end_api_key(uuid, text) from public;

-- ---------------------------------------------------------------- SQL API: delivery log
-- Keyset pagination, newest first: pass the last id of a page as before_id.
-- webhook_id NULL: all the owner's webhooks. Filters: status, and the
-- delivery's creation time in [created_since, created_until).
create function outbox.list_deliveries(owner_id text, webhook_id uuid default null, before_id bigint default null,
                                       max_rows integer default 50, status outbox.delivery_status default null,
                                       created_since timestamptz default null,
                                       created_until timestamptz default null,
                                       event_type text default null)
returns setof outbox.delivery_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
-- Planned for each call's filters: a cached generic plan walks the log
-- newest first whatever they are, and read all 100,000 deliveries (140 ms)
-- for an event type with none; planned per call it reads that type's
-- events first (13 ms). Planning costs well under a millisecond.
set plan_cache_mode = force_custom_plan
as $$
begin
    perform outbox.check_owner_id(list_deliveries.owner_id);
    if list_deliveries.webhook_id is not null then
        perform 1 from outbox.webhooks w
         where w.id = list_deliveries.webhook_id and w.owner_id = list_deliveries.owner_id;
        if not found then
            raise exception 'webhook % not found', list_deliveries.webhook_id using errcode = 'OW005';
        end if;
    end if;
    return query
        select d.* from outbox.delivery_info d
         where d.owner_id = list_deliveries.owner_id
           and (list_deliveries.webhook_id is null or d.webhook_id = list_deliveries.webhook_id)
           and (list_deliveries.status is null or d.status = list_deliveries.status)
           and (list_deliveries.created_since is null or d.created_at >= list_deliveries.created_since)
           and (list_deliveries.created_until is null or d.created_at < list_deliveries.created_until)
           and (list_deliveries.event_type is null or d.event_type = list_deliveries.event_type)
           and (list_deliveries.before_id is null or d.id < list_deliveries.before_id)
         order by d.id desc
         limit greatest(coalesce(list_deliveries.max_rows, 50), 0);
end $$;
comment on function outbox.list_deliveries(text, uuid, bigint, integer, outbox.delivery_status, timestamptz, timestamptz, text) is
    'A page of an owner''s deliveries (of one webhook, or all; by status, creation time, event type), newest first, with their attempts';

-- webhook_id NULL: whichever of the owner's webhooks the delivery is for.
create function outbox.get_delivery(owner_id text, webhook_id uuid, delivery_id bigint)
returns setof outbox.delivery_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(get_delivery.owner_id);
    return query
        select d.* from outbox.delivery_info d
         where d.id = get_delivery.delivery_id
           and (get_delivery.webhook_id is null or d.webhook_id = get_delivery.webhook_id)
           and d.owner_id = get_delivery.owner_id;
    if not found then
        raise exception 'delivery % not found', get_delivery.delivery_id using errcode = 'OW008';
    end if;
end $$;

-- ---------------------------------------------------------------- console sessions
-- A signed-in browser: the SHA-256 of the random token in its cookie, and
-- the key it signed in with. A session lives while its key does: revoking
-- the key ends it (outbox.console_session joins the key's revoked_at).
create table outbox.console_sessions (
    token_hash bytea primary key check (octet_length(token_hash) = 32),
    api_key_id uuid not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index console_sessions_expires_idx on outbox.console_sessions (expires_at);
comment on table outbox.console_sessions is
    'Web console sign-ins: SHA-256 of the cookie''s token, never the token; ended by sign-out, expiry or key revocation';

-- Signs in with a key's hash; no row for an unknown or revoked key. Expired
-- sessions are removed on the way (a handful: sign-ins are rare).
create function outbox.start_console_session(key_hash bytea, token_hash bytea, lifetime interval)
returns table (owner_id text, operator boolean)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key outbox.api_keys;
begin
    delete from outbox.console_sessions s where s.expires_at <= now();
    select * into v_key from outbox.api_keys k
     where k.key_hash = start_console_session.key_hash and k.revoked_at is null;
    if not found then
        return;
    end if;
    insert into outbox.console_sessions (token_hash, api_key_id, expires_at)
    values (start_console_session.token_hash, v_key.id, now() + start_console_session.lifetime);
    return query select v_key.owner_id, v_key.operator;
end $$;
comment on function outbox.start_console_session(bytea, bytea, interval) is
    'Start a console session for the live API key with this SHA-256; no row when the key is unknown or revoked';

create function outbox.console_session(token_hash bytea)
returns table (api_key_id uuid, owner_id text, operator boolean)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select k.id, k.owner_id, k.operator
      from outbox.console_sessions s
      join outbox.api_keys k on k.id = s.api_key_id
     where s.token_hash = console_session.token_hash
       and s.expires_at > now()
       and k.revoked_at is null
$$;
comment on function outbox.console_session(bytea) is
    'The key behind a live console session (none once it expired, ended or its key was revoked)';

create function outbox.end_console_session(token_hash bytea) returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
    delete from outbox.console_sessions s where s.token_hash = end_console_session.token_hash
$$;
comment on function outbox.end_console_session(bytea) is 'Sign a console session out';

-- ---------------------------------------------------------------- SQL API: console reads
-- Attempts of each of an owner's webhooks since a time, in buckets of a
-- given width: how many, how many answered 2xx, and the median and 99th
-- percentile of their duration. One more row per webhook with bucket_start
-- NULL holds the whole span. Only deliveries that can hold such an attempt
-- are read: those not finished, or finished since then.
create function outbox.webhook_health(owner_id text, since timestamptz, bucket interval)
returns table (webhook_id uuid, bucket_start timestamptz, attempts bigint, successes bigint,
               p50_ms double precision, p99_ms double precision)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(webhook_health.owner_id);
    return query
        select d.webhook_id,
               date_bin(webhook_health.bucket, a.attempted_at, webhook_health.since) as bucket_start,
               count(*) as attempts,
               count(*) filter (where a.status_code between 200 and 299) as successes,
               percentile_cont(0.5) within group (order by a.duration_ms) as p50_ms,
               percentile_cont(0.99) within group (order by a.duration_ms) as p99_ms
          from outbox.webhooks w
          join outbox.deliveries d on d.webhook_id = w.id
          join outbox.delivery_attempts a on a.delivery_id = d.id
         where w.owner_id = webhook_health.owner_id
           and (d.completed_at is null or d.completed_at >= webhook_health.since)
           and a.attempted_at >= webhook_health.since
         group by grouping sets ((d.webhook_id, date_bin(webhook_health.bucket, a.attempted_at, webhook_health.since)),
                                 (d.webhook_id))
         order by 1, 2 nulls first;
end $$;
comment on function outbox.webhook_health(text, timestamptz, interval) is
    'Per webhook of an owner: attempts, 2xx answers, p50 and p99 duration since a time, per bucket and in all (bucket_start NULL)';

-- What deleting a webhook takes with it, for the confirmation.
create function outbox.webhook_log_counts(owner_id text, webhook_id uuid)
returns table (deliveries bigint, attempts bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(webhook_log_counts.owner_id);
    perform 1 from outbox.webhooks w
     where w.id = webhook_log_counts.webhook_id and w.owner_id = webhook_log_counts.owner_id;
    if not found then
        raise exception 'webhook % not found', webhook_log_counts.webhook_id using errcode = 'OW005';
    end if;
    return query
        select count(distinct d.id), count(a.id)
          from outbox.deliveries d
          left join outbox.delivery_attempts a on a.delivery_id = d.id
         where d.webhook_id = webhook_log_counts.webhook_id;
end $$;
comment on function outbox.webhook_log_counts(text, uuid) is
    'The deliveries and attempts deleting one of an owner''s webhooks would delete';

-- Workers connected now: their sessions carry application_name
-- 'outbox-worker <worker id>' (outbox_worker.worker).
create function outbox.alive_workers()
returns table (worker_id text, connections bigint, connected_since timestamptz)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select substr(a.application_name, length('outbox-worker ') + 1), count(*), min(a.backend_start)
      from pg_stat_activity a
     where a.datname = current_database() and a.application_name like 'outbox-worker %'
     group by a.application_name
     order by 1
$$;
comment on function outbox.alive_workers() is 'Workers with a connection to this database now, by worker id';
