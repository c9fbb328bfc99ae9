-- webhook-id is evt_<event id>, unique within one database. A worker fleet
-- serving several databases prefixes it with the database's own prefix,
-- stored here so that it moves with the database, not with a worker's
-- configuration. Empty (the default) keeps the ids of a single database
-- unchanged across this upgrade: receivers that deduplicate see no new ids.
alter table outbox.config
    add column message_id_prefix text not null default ''
        constraint config_message_id_prefix_check check (message_id_prefix ~ '^[a-z0-9]{0,16}$');
comment on column outbox.config.message_id_prefix is
    'webhook-id is evt_<prefix>_<event id> when set (evt_<event id> when empty): unique across databases; set by outbox-worker migrate with several databases';
