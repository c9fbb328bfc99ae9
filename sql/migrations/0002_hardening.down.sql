-- Reverts revision 0003: the functions as revision 0001 made them.
drop function outbox.expire_previous_secret(text, uuid);
drop function outbox.redeliver(bigint, text);
drop function outbox.redeliver_any_owner(bigint);
drop function outbox.restart_delivery(bigint, text);
drop function outbox.revoke_api_key(uuid, text);
drop function outbox.revoke_api_key_any_owner(uuid);
drop function outbox.end_api_key(uuid, text);
drop index outbox.webhooks_previous_secret_idx;

-- Patterns that match an event type: '*', each 'prefix.*' and the type
-- itself. Fan-out uses it with the array overlap operator; dispatch calls it
-- once per claimed event. plpgsql without a SET clause: as a SQL function
-- with "set search_path" it could not be inlined, paid a GUC save/restore
-- per call and planned its body again in every statement that called it
-- (~8 us per event instead of ~3 us). plpgsql caches its expressions per
-- session. Every function and operator is named by schema, so the caller's
-- search_path cannot redirect it.
create or replace function outbox.event_patterns(p_event_type text) returns text[]
language plpgsql immutable parallel safe
as $$
declare
    parts text[] := pg_catalog.string_to_array(p_event_type, '.');
    patterns text[] := array['*', p_event_type];
begin
    -- 'a.b.c' also matches 'a.*' and 'a.b.*'.
    for n in 1 .. coalesce(pg_catalog.cardinality(parts), 1) - 1 loop
        patterns := patterns operator(pg_catalog.||)
                    (pg_catalog.array_to_string(parts[1:n], '.') operator(pg_catalog.||) '.*');
    end loop;
    return patterns;
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
