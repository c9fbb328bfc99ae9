alter table outbox.config drop column message_id_prefix;
