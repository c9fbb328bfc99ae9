-- Reverts revision 0001: everything outbox_worker created, data included.
drop schema outbox cascade;
