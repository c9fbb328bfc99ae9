-- SQL of the tiny shop in `outbox-worker demo`: the application's own
-- business statements, not the worker's (those are all in queries.sql).
-- The shop runs each insert/update in one transaction with outbox.emit().

-- demo_shop_table: the demo shop's own business table
create table demo_shop_orders (
    id text primary key,
    customer text not null,
    total numeric(10, 2) not null,
    status text not null,
    updated_at timestamptz not null default now()
);

-- demo_shop_insert: the demo shop places an order
insert into demo_shop_orders (id, customer, total, status) values (%(id)s, %(customer)s, %(total)s, 'NEW');

-- demo_shop_update: the demo shop moves an order on
update demo_shop_orders set status = %(status)s, updated_at = now() where id = %(id)s;
