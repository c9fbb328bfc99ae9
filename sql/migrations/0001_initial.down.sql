-- Reverts revision 0001: everything outbox_worker created, data included.
-- Every object is in the outbox schema (no roles, extensions or event
-- triggers outside it), so the database is left as before the upgrade.
drop schema outbox cascade;
