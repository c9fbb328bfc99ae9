-- outbox_worker schema, revision 0003: hardening.
-- * outbox.event_patterns refuses what is no event type or pattern (its
--   cost grew with the square of its input);
-- * redeliver and revoke_api_key require the owner; operators' calls across
--   owners are redeliver_any_owner and revoke_api_key_any_owner;
-- * expire_previous_secret ends a rotation's overlap early, and an index
--   serves the worker's erasing of previous secrets whose overlap ended.

-- The worker erases previous secrets whose overlap has ended (expired_previous_secrets).
create index webhooks_previous_secret_idx on outbox.webhooks (previous_secret_expires_at)
    where previous_secret is not null;

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
create or replace function outbox.event_patterns(p_event_type text) returns text[]
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

drop function outbox.redeliver(bigint, text);
drop function outbox.revoke_api_key(uuid, text);

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
