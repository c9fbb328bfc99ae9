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

-- create_api_key: issue an API key; the only time the key is returned
select id, key from outbox.create_api_key(%(owner_id)s, %(prefix)s);

-- api_key_owner: owner of the live key with this SHA-256 (NULL when unknown or revoked)
select outbox.api_key_owner(%(key_hash)s) as owner_id;

-- list_api_keys: an owner's keys, revoked ones included, never their hashes
select * from outbox.list_api_keys(%(owner_id)s);

-- revoke_api_key: revoke a key (owner NULL = any owner, for operators)
select * from outbox.revoke_api_key(%(key_id)s, %(owner_id)s);

-- list_deliveries: a page of a webhook's deliveries with attempts, newest first
select * from outbox.list_deliveries(%(owner_id)s, %(webhook_id)s, %(before_id)s, %(max_rows)s);

-- get_delivery: one delivery of an owner's webhook, with attempts
select * from outbox.get_delivery(%(owner_id)s, %(webhook_id)s, %(delivery_id)s);
