-- outbox_worker schema, revision 0002: API keys of the management HTTP API,
-- the delivery log it serves, and the brand webhook topics.
--
-- Error codes added here (OW02x is reserved for API keys so that revisions
-- written in parallel do not collide):
--   OW020 API key not found         OW021 invalid API key prefix

-- ---------------------------------------------------------------- API keys
-- A key is a prefix plus 32 random bytes in hex, so an unsalted SHA-256 is
-- enough: there is no dictionary to try. Only the hash is stored; the key
-- itself exists once, in the answer of create_api_key().
create table outbox.api_keys (
    id uuid primary key default gen_random_uuid(),
    owner_id text not null,
    key_hash bytea not null unique check (octet_length(key_hash) = 32),
    display_prefix text not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
create index api_keys_owner_idx on outbox.api_keys (owner_id);
comment on table outbox.api_keys is 'X-Api-Key credentials of the management API: SHA-256 of each key, never the key';
comment on column outbox.api_keys.display_prefix is 'First characters of the key, to tell keys apart; not enough to use it';

-- The hash-free face of a key, for listings and the read-only DBA role.
create view outbox.api_key_info as
select id, owner_id, display_prefix, created_at, revoked_at
  from outbox.api_keys;

create function outbox.create_api_key(owner_id text, prefix text default 'brut_')
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
        insert into outbox.api_keys as k (owner_id, key_hash, display_prefix)
        values (create_api_key.owner_id, sha256(convert_to(v_key, 'UTF8')),
                left(v_key, length(create_api_key.prefix) + 8))
        returning k.id, v_key;
end $$;
comment on function outbox.create_api_key(text, text) is 'Issue an API key for an owner; the only time the key is returned';

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

-- Idempotent: revoking a revoked key keeps its first revocation time.
create function outbox.revoke_api_key(key_id uuid, owner_id text default null)
returns setof outbox.api_key_info
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    return query
        update outbox.api_keys k
           set revoked_at = coalesce(k.revoked_at, now())
         where k.id = revoke_api_key.key_id
           and (revoke_api_key.owner_id is null or k.owner_id = revoke_api_key.owner_id)
        returning k.id, k.owner_id, k.display_prefix, k.created_at, k.revoked_at;
    if not found then
        raise exception 'API key % not found', revoke_api_key.key_id using errcode = 'OW020';
    end if;
end $$;

-- ---------------------------------------------------------------- delivery log per webhook
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

-- Keyset pagination, newest first: pass the last id of a page as before_id.
create function outbox.list_deliveries(owner_id text, webhook_id uuid, before_id bigint default null,
                                       max_rows integer default 50)
returns setof outbox.delivery_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
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
end $$;
comment on function outbox.list_deliveries(text, uuid, bigint, integer) is 'A page of a webhook''s deliveries, newest first, with their attempts';

create function outbox.get_delivery(owner_id text, webhook_id uuid, delivery_id bigint)
returns setof outbox.delivery_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform outbox.check_owner_id(get_delivery.owner_id);
    return query
        select d.* from outbox.delivery_info d
         where d.id = get_delivery.delivery_id and d.webhook_id = get_delivery.webhook_id
           and d.owner_id = get_delivery.owner_id;
    if not found then
        raise exception 'delivery % not found', get_delivery.delivery_id using errcode = 'OW008';
    end if;
end $$;

-- ---------------------------------------------------------------- brand webhook topics
-- The topics of the brand webhooks API are event types like any other.
insert into outbox.event_types (name, description) values
    ('Deals', 'Brand topic: deals'),
    ('Showings', 'Brand topic: showings'),
    ('Contacts', 'Brand topic: contacts')
on conflict (name) do nothing;
