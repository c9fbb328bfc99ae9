-- Reverts revision 0002. Brand topics go only if they still carry the
-- description 0002 gave them (an operator may have adopted them).
drop function outbox.get_delivery(text, uuid, bigint);
drop function outbox.list_deliveries(text, uuid, bigint, integer);
drop view outbox.delivery_info;
drop function outbox.revoke_api_key(uuid, text);
drop function outbox.list_api_keys(text);
drop function outbox.api_key_owner(bytea);
drop function outbox.create_api_key(text, text);
drop view outbox.api_key_info;
drop table outbox.api_keys;
delete from outbox.event_types
 where name in ('Deals', 'Showings', 'Contacts') and description like 'Brand topic: %';
