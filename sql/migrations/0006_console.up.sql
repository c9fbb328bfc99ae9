-- The web console (`outbox-worker api`, /console): operator keys, console
-- sessions, an event type filter on the delivery log, and the reads of its
-- health, delete and operator pages.

-- ---------------------------------------------------------------- operator keys
alter table outbox.api_keys add column operator boolean not null default false;
comment on column outbox.api_keys.operator is
    'An operator key: the console shows and manages every owner''s webhooks (the HTTP API still acts for owner_id)';

drop function outbox.create_api_key(text, text);
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

-- ---------------------------------------------------------------- delivery log: by event type
drop function outbox.list_deliveries(text, uuid, bigint, integer, outbox.delivery_status, timestamptz, timestamptz);
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

-- ---------------------------------------------------------------- health
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
