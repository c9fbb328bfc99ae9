-- Reverts revision 0006: the three foreign keys come back. Orphans (none,
-- unless rows were written around the worker's statements) would fail the
-- keys' validation, so they go first, as the cascades would have removed
-- them.
drop trigger events_cascade on outbox.events;
drop trigger webhooks_cascade on outbox.webhooks;
drop trigger deliveries_cascade on outbox.deliveries;
drop trigger events_cascade_truncate on outbox.events;
drop trigger webhooks_cascade_truncate on outbox.webhooks;
drop trigger deliveries_cascade_truncate on outbox.deliveries;
drop function outbox.cascade_delete();
drop function outbox.cascade_truncate();

comment on column outbox.deliveries.event_id is null;
comment on column outbox.deliveries.webhook_id is null;
comment on column outbox.delivery_attempts.delivery_id is null;

delete from outbox.deliveries d
 where not exists (select from outbox.events e where e.id = d.event_id)
    or not exists (select from outbox.webhooks w where w.id = d.webhook_id);
delete from outbox.delivery_attempts a
 where not exists (select from outbox.deliveries d where d.id = a.delivery_id);

alter table outbox.deliveries
    add constraint deliveries_event_id_fkey foreign key (event_id) references outbox.events (id) on delete cascade;
alter table outbox.deliveries
    add constraint deliveries_webhook_id_fkey foreign key (webhook_id) references outbox.webhooks (id) on delete cascade;
alter table outbox.delivery_attempts
    add constraint delivery_attempts_delivery_id_fkey
    foreign key (delivery_id) references outbox.deliveries (id) on delete cascade;
