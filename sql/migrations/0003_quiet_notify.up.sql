-- Quiet NOTIFY: an emitting transaction notifies only when no worker is
-- already draining the outbox.
--
-- Why: at commit, a transaction that issued NOTIFY takes a database-wide lock
-- held until its commit record is flushed (async.c, PreCommit_Notify), so
-- notifying transactions commit one at a time and group commit is lost. Under
-- load a worker is awake anyway and a notification wakes nobody.
--
-- Two advisory locks in the class 1869968482 ('outb'; see docs/dba.md):
--   (1869968482, 2) "busy": a worker holds it (session-level, exclusive) while
--       it drains. Emitters only try it, shared, and let go at once: if they
--       get it, no worker is busy and they notify as before.
--   (1869968482, 1) "in flight": every emitting statement holds it shared
--       until its transaction ends. A busy worker may stop being busy only
--       once it gets this lock exclusively (it only tries, never waits, so an
--       emitter is never blocked by more than that one statement), i.e. when
--       no emitter that may have skipped its NOTIFY is still uncommitted; its
--       next claim then sees all their events.
-- Locks are not snapshots, so this holds at every isolation level, and a
-- worker that dies drops "busy" with its connection: emitters notify again.
create or replace function outbox.events_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_catalog.pg_advisory_xact_lock_shared(1869968482, 1);
    if pg_catalog.pg_try_advisory_lock_shared(1869968482, 2) then
        perform pg_catalog.pg_advisory_unlock_shared(1869968482, 2);
        perform pg_catalog.pg_notify('outbox_events', '');
    end if;
    return null;
end $$;
comment on function outbox.events_notify() is
    'Wakes workers at commit (NOTIFY outbox_events), unless a worker is already draining';

-- A worker's way out of "busy": true when it let go of it, false when an
-- emitting transaction is still in flight (the caller keeps polling). The
-- exclusive "in flight" lock is transaction-level, so it cannot outlive this
-- call, not even on an error.
create function outbox.release_busy() returns boolean
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not pg_try_advisory_xact_lock(1869968482, 1) then
        return false;
    end if;
    perform pg_advisory_unlock(1869968482, 2);
    return true;
end $$;
comment on function outbox.release_busy() is
    'Worker: stop suppressing NOTIFY, once no emitter that skipped it is uncommitted';
