-- Ids of the hot tables cannot change, and updating a webhook no longer
-- holds up dispatch.
--
-- Why: migration 0006 dropped the foreign keys, which also refused an UPDATE
-- of a parent's id while children referred to it. Nothing in the product
-- changes an id, but a statement by hand (UPDATE outbox.webhooks SET id =
-- ..., or SET id = DEFAULT on events and deliveries, the one change their
-- GENERATED ALWAYS identity allows) would orphan every delivery and attempt
-- below the row. A statement-level trigger refuses such an UPDATE before it
-- touches a row. It fires only for an UPDATE that names "id" among its
-- targets (PostgreSQL checks the column list once per statement), so the
-- worker's updates, which never do, pay one check per statement, where a
-- row-level trigger is considered for every row they update.
--
-- update_webhook() locked its row FOR UPDATE, which conflicts with the FOR
-- KEY SHARE that dispatch takes on the webhooks of a batch (0006): a caller
-- holding its transaction open after update_webhook() stopped every worker's
-- dispatch, for every owner in the batch, until it ended. FOR NO KEY UPDATE,
-- the lock its own UPDATE takes anyway, does not conflict with KEY SHARE;
-- two updates of one webhook still take turns, and delete_webhook() still
-- waits for a dispatch in progress.
--
-- New error code: OW011 id cannot be changed.

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
    -- NO KEY UPDATE: nothing here changes the webhook's id, and a FOR UPDATE
    -- lock would make dispatch's FOR KEY SHARE wait (migration 0007).
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
end $$;
