-- Privileges for the three kinds of login, applied by `outbox-worker grant`.
-- {role} is the role name, quoted as an identifier by the caller. Run again
-- after a migration that adds objects.

-- app: emit only. emit() or a plain INSERT of (owner_id, event_type, data,
-- ordering_key, idempotency_key, traceparent); it can read nothing back but the new id.
-- The emit trigger runs as the app: it records idempotency keys (an INSERT
-- ... ON CONFLICT DO UPDATE) and emit() reads the first event's id back.
grant usage on schema outbox to {role};
grant execute on function outbox.emit(text, text, jsonb, text, text, text) to {role};
grant insert (owner_id, event_type, data, ordering_key, idempotency_key, traceparent) on outbox.events to {role};
grant select (id) on outbox.events to {role};
grant select on outbox.event_types, outbox.config to {role};
grant select, insert, update on outbox.idempotency_keys to {role};
-- An event with an ordering key draws its id again after the key's lock.
grant usage on sequence outbox.events_id_seq to {role};

-- worker: runs the delivery engine and the management commands.
grant usage on schema outbox to {role};
grant select, insert, update, delete on all tables in schema outbox to {role};
grant usage, select on all sequences in schema outbox to {role};
grant execute on all functions in schema outbox to {role};

-- dba: reads everything but the secrets.
grant usage on schema outbox to {role};
grant select on outbox.delivery_log, outbox.queue_stats, outbox.event_backlog, outbox.webhook_info,
                outbox.api_key_info, outbox.delivery_info,
                outbox.events, outbox.deliveries, outbox.delivery_attempts, outbox.event_types,
                outbox.config to {role};
-- Not secret, previous_secret nor headers (their values authenticate).
grant select on outbox.idempotency_keys to {role};
grant select (id, owner_id, url, events, enabled, disabled_reason, created_at, updated_at,
              last_success_at, failing_since, previous_secret_expires_at, rate_limit) on outbox.webhooks to {role};
