-- Reverts revision 0006 to the schema of revision 0005: console sessions
-- and operator flags are dropped with their data.

drop function outbox.alive_workers();
drop function outbox.webhook_log_counts(text, uuid);
drop function outbox.webhook_health(text, timestamptz, interval);

drop function outbox.list_deliveries(text, uuid, bigint, integer, outbox.delivery_status, timestamptz, timestamptz, text);
create function outbox.list_deliveries(owner_id text, webhook_id uuid default null, before_id bigint default null,
                                       max_rows integer default 50, status outbox.delivery_status default null,
                                       created_since timestamptz default null,
                                       created_until timestamptz default null)
returns setof outbox.delivery_info
language plpgsql stable
set search_path = pg_catalog, pg_temp
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
           and (list_deliveries.before_id is null or d.id < list_deliveries.before_id)
         order by d.id desc
         limit greatest(coalesce(list_deliveries.max_rows, 50), 0);
end $$;
comment on function outbox.list_deliveries(text, uuid, bigint, integer, outbox.delivery_status, timestamptz, timestamptz) is
    'A page of an owner''s deliveries (of one webhook, or all), newest first, with their attempts';

drop function outbox.end_console_session(bytea);
drop function outbox.console_session(bytea);
drop function outbox.start_console_session(bytea, bytea, interval);
drop table outbox.console_sessions;

drop function outbox.create_api_key(text, text, boolean);
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

alter table outbox.api_keys drop column operator;
