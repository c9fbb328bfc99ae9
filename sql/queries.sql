-- Every statement outbox_worker runs, each under a "-- name: description"
-- header. Parameters are psycopg placeholders; the worker's hot-path
-- queries take arrays so that one round trip serves a whole batch.

-- emit: queue one event in the caller's transaction
select outbox.emit(%(owner_id)s, %(event_type)s, cast(%(data)s as jsonb)) as id;

-- add_event_type: add (or re-describe) an event type in the catalogue
select outbox.add_event_type(%(name)s, %(description)s);

-- list_event_types: the catalogue
select name, description, created_at from outbox.event_types order by name;

-- create_webhook: register a webhook; the only time its secret is returned
select id, secret from outbox.create_webhook(%(owner_id)s, %(url)s, %(events)s);

-- update_webhook: change url, events or enabled (NULL = unchanged)
select * from outbox.update_webhook(%(owner_id)s, %(webhook_id)s, %(url)s, %(events)s, %(enabled)s);

-- delete_webhook: remove a webhook with its deliveries and attempts
select outbox.delete_webhook(%(owner_id)s, %(webhook_id)s);

-- list_webhooks: an owner's webhooks, optionally only those an event type reaches
select * from outbox.list_webhooks(%(owner_id)s, %(event_type)s);

-- get_webhook: one webhook of an owner
select * from outbox.get_webhook(%(owner_id)s, %(webhook_id)s);

-- rotate_webhook_secret: new secret; the old one keeps signing for the overlap
select id, secret from outbox.rotate_webhook_secret(%(owner_id)s, %(webhook_id)s);

-- redeliver: start a new round of attempts for one delivery
select outbox.redeliver(%(delivery_id)s, %(owner_id)s) as id;

-- replay_failed: re-queue a webhook's deliveries that failed since a time
select outbox.replay_failed(%(owner_id)s, %(webhook_id)s, %(since)s) as count;
