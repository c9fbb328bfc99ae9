-- Back to the server's default_toast_compression for new values; values
-- already written with lz4 stay readable as they are.
alter table outbox.events
    alter column data set compression default,
    alter column body set compression default;
