-- lz4 instead of pglz for the payload and the body of outbox.events, where
-- the server has it (PostgreSQL 14+ built --with-lz4, as Debian's and the
-- official images are); elsewhere nothing changes.
--
-- Why: a payload of more than ~2 KB is compressed in the emitting
-- transaction, and its body copy again when the worker stores it; pglz
-- took ~9% of PostgreSQL's time in a drain of 4.3 KB events (perf, 20,000
-- x 1). With lz4 (2026-12-04, README Performance): the app's transaction
-- with a 4.3 KB emit 7,099 -> 7,675 tx/s at 8 clients (3 rounds, faster in
-- each), the drain's PostgreSQL CPU 0.129 -> 0.116 ms per delivery (4
-- rounds, lower in each), the stored size the same. Payloads under ~2 KB
-- are not compressed either way.
--
-- Only new values are written with lz4; existing ones stay pglz and read
-- as before. A catalogue change (no rewrite), but ALTER TABLE takes the
-- table's ACCESS EXCLUSIVE lock for that instant: it waits for open
-- transactions on outbox.events, and emits wait behind it.

do $$
begin
    if exists (select from pg_catalog.pg_settings
                where name = 'default_toast_compression' and 'lz4' = any (enumvals)) then
        alter table outbox.events
            alter column data set compression lz4,
            alter column body set compression lz4;
    end if;
end $$;
