-- outbox_worker schema, revision 0009: retention run by the workers. A lease
-- row elects the one worker that purges at a time (no session-level
-- advisory lock: behind a transaction-mode pooler there is no session),
-- and a log of the passes. sql/schema.sql has the result in place.

-- Who runs a maintenance task now: one row per task, claimed by a worker
-- while expires_at has passed (UPDATE ... RETURNING) and renewed by each of
-- its batches. A row, not an advisory lock: a session-level lock cannot
-- live behind a transaction-mode pooler, and the row shows who holds it.
-- Each batch renews it first, in its own transaction, so two workers'
-- batches never run at once: the second's claim waits for the row lock and
-- then finds the lease renewed.
create table outbox.maintenance_leases (
    name text primary key,
    holder text,
    acquired_at timestamptz,
    expires_at timestamptz  -- NULL: never held
);
insert into outbox.maintenance_leases (name) values ('retention');
comment on table outbox.maintenance_leases is
    'Maintenance tasks the workers elect one runner for (retention): who holds each and until when';

-- One row per retention pass: who ran it, from the claim to the end of its
-- last batch, and what it removed. The passes trim it to a week.
create table outbox.maintenance_runs (
    id bigint generated always as identity primary key,
    name text not null,
    holder text not null,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    batches integer not null,
    events bigint not null,
    deliveries bigint not null,
    attempts bigint not null,
    idempotency_keys bigint not null
);
create index maintenance_runs_finished_idx on outbox.maintenance_runs (finished_at);
comment on table outbox.maintenance_runs is
    'Retention passes of the last week: holder, start (lease claimed) and end (last batch), rows removed';

