-- Back to 0006: ids updatable again, update_webhook() locking FOR UPDATE.

drop trigger events_id_fixed on outbox.events;
drop trigger webhooks_id_fixed on outbox.webhooks;
drop trigger deliveries_id_fixed on outbox.deliveries;
drop function outbox.refuse_id_change();

create or replace function outbox.update_webhook(owner_id text, webhook_id uuid, url text default null,
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
