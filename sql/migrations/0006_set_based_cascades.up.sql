-- The three foreign keys of the hot tables (deliveries -> events,
-- deliveries -> webhooks, delivery_attempts -> deliveries) become
-- statement-level cascades and batched locks.
--
-- Why: a foreign key checks each inserted row with a query of its own (a
-- row trigger running SELECT ... FOR KEY SHARE on the parent), so every
-- delivery paid two and every attempt one, in the worker's hottest
-- statements. Paired drains on 2026-12-03 (4 pairs each, dropping the keys
-- and nothing else): 20,000 x 1, PostgreSQL CPU 0.107 -> 0.084 ms per
-- delivery and 5,070 -> 5,823 deliveries/s (all 4 pairs faster);
-- 5,000 x 5, 0.087 -> 0.070 ms (all 4 pairs lower).
--
-- What the keys guaranteed still holds, batched:
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
-- * deleting a parent deletes its children: AFTER DELETE statement triggers
--   with transition tables, one set-based DELETE per statement (a foreign
--   key's cascade is one DELETE per parent row), and TRUNCATE of a parent
--   empties its children (with the keys, it was refused without CASCADE).
--   The trigger functions run as their owner, like a key's cascade, so
--   whoever may delete a webhook removes its history too.
-- docs/dba.md ("Integrity without foreign keys") has the query that finds
-- orphans, which should always return nothing.

alter table outbox.deliveries drop constraint deliveries_event_id_fkey;
alter table outbox.deliveries drop constraint deliveries_webhook_id_fkey;
alter table outbox.delivery_attempts drop constraint delivery_attempts_delivery_id_fkey;

-- One function for the three cascades: the trigger's arguments name the
-- child table and its column. "= any(array(...))": an index lookup per
-- deleted parent, whatever the planner thinks of a transition table's size.
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
    return null;
end $$;

revoke execute on function outbox.cascade_delete(), outbox.cascade_truncate() from public;
comment on function outbox.cascade_delete() is
    'Deletes the rows of table TG_ARGV[0] whose column TG_ARGV[1] names a deleted row (was a foreign key)';
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

comment on column outbox.deliveries.event_id is 'outbox.events.id (kept by dispatch and a delete cascade, not a foreign key: migration 0006)';
comment on column outbox.deliveries.webhook_id is 'outbox.webhooks.id (kept by dispatch and a delete cascade, not a foreign key: migration 0006)';
comment on column outbox.delivery_attempts.delivery_id is 'outbox.deliveries.id (kept by complete_deliveries and a delete cascade, not a foreign key: migration 0006)';
