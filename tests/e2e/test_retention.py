"""Retention run by real workers under a steady load: the outbox tables stop
growing after the first retention period, nothing pending, leased or inside
the window is removed, every delivery arrives, and the two workers' passes
never overlap.

The window is seconds long, so autovacuum (which visits a database once a
minute) would not come round within the test: a loop here vacuums the
three history tables every second, in its place. What autovacuum does at
production scale is measured by ``bench/retention.py`` (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import psycopg
import pytest

from outbox_worker import migrate, webhooks
from tests import pgbouncer
from tests.conftest import TEST_CONFIG
from tests.e2e.test_pooler import skip_without_pgbouncer
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import kill, spawn_worker

WINDOW = 3.0  # seconds of retention
LOAD_SECONDS = 8 * WINDOW
RATE = 40  # events/s, each to 3 webhooks
HOOKS = 3

# Who removed what, and when: every row retention takes from events and
# deliveries, recorded by statement-level triggers of this test's database.
AUDIT = """
create table public.removed (
    tbl text not null, id bigint not null, created_at timestamptz, status text,
    removed_at timestamptz not null default clock_timestamp()
);
create function public.audit_removed() returns trigger language plpgsql as $$
begin
    if tg_table_name = 'events' then
        insert into public.removed (tbl, id, created_at) select 'events', id, created_at from gone;
    else
        insert into public.removed (tbl, id, status) select 'deliveries', id, status::text from gone;
    end if;
    return null;
end $$;
create trigger audit_events after delete on outbox.events
    referencing old table as gone for each statement execute function public.audit_removed();
create trigger audit_deliveries after delete on outbox.deliveries
    referencing old table as gone for each statement execute function public.audit_removed();
"""

SIZE = """
select sum(pg_total_relation_size(c.oid))::bigint
  from pg_class c
 where c.relnamespace = 'outbox'::regnamespace and c.relkind = 'r'
"""


@pytest.fixture
def retention_db(make_database: Any) -> str:
    """A database of its own: the audit triggers must not reach other tests."""
    url: str = make_database("outbox_retention")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TEST_CONFIG)
        conn.execute(AUDIT)
    return url


def seed_old_unfinished(conn: psycopg.Connection[Any], hook: str) -> list[int]:
    """Deliveries an hour old that are not finished: one waiting for a retry
    a day out, one leased by a worker (its lease a day long). Neither is due,
    so the workers leave them alone; retention must too."""
    ids = []
    for leased in (False, True):
        row = conn.execute(
            "with e as (insert into outbox.events (owner_id, event_type, data, created_at, dispatched_at) "
            "values ('shop', 'order.created', '{}', now() - interval '1 hour', now()) returning id) "
            "insert into outbox.deliveries "
            "(event_id, webhook_id, attempts, next_attempt_at, leased_until, leased_by) "
            "select e.id, %s, 1, now() + interval '1 day', case when %s then now() + interval '1 day' end, "
            "case when %s then 'elsewhere' end from e returning id",
            (hook, leased, leased),
        ).fetchone()
        assert row is not None
        ids.append(int(row[0]))
    return ids


async def test_retention_holds_the_size_flat_under_load_and_removes_only_finished_history(
    retention_db: str, receiver: Receiver
) -> None:
    url = retention_db
    with psycopg.connect(url, autocommit=True) as conn:
        hooks = [
            str(webhooks.create_webhook(conn, "shop", receiver.url(f"/h{i}"), ["order.created"]).id)
            for i in range(HOOKS)
        ]
        unfinished = seed_old_unfinished(conn, hooks[0])
    workers = [
        spawn_worker(url, f"keeper-{i}", retention=f"{WINDOW:g}s", batch_size=50, concurrency=32)
        for i in range(2)
    ]
    sizes: list[tuple[float, int]] = []
    emitted = 0
    try:
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as emitter,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher,
        ):
            started = time.monotonic()
            next_sample = 0.0
            # The load: RATE events a second in tenths, for LOAD_SECONDS.
            while (elapsed := time.monotonic() - started) < LOAD_SECONDS:
                await emitter.execute(
                    "select outbox.emit('shop', 'order.created', jsonb_build_object('n', g)) "
                    "from generate_series(cast(%s as integer), cast(%s as integer)) g",
                    (emitted + 1, emitted + RATE // 10),
                )
                emitted += RATE // 10
                if elapsed >= next_sample:  # once a second: autovacuum's part, then a size
                    next_sample += 1.0
                    await watcher.execute("vacuum outbox.events, outbox.deliveries, outbox.delivery_attempts")
                    row = await (await watcher.execute(SIZE)).fetchone()
                    assert row is not None
                    sizes.append((elapsed, int(row[0])))
                await asyncio.sleep(max(0.0, started + (emitted / RATE) - time.monotonic()))

            # Every delivery arrived at least once.
            def arrived() -> set[tuple[str, int]]:
                return {(r.path, json.loads(r.body)["data"]["n"]) for r in receiver.requests}

            expected = {(f"/h{i}", n) for i in range(HOOKS) for n in range(1, emitted + 1)}

            async def all_arrived() -> bool:
                return expected <= arrived()

            await eventually(all_arrived, timeout=60, what=f"{len(expected)} deliveries")
    finally:
        for worker in workers:
            kill(worker, 15)
        for worker in workers:
            worker.wait(30)
        stderr = b"".join(w.stderr.read() for w in workers if w.stderr)

    assert all(w.returncode == 0 for w in workers), stderr.decode()[-2000:]
    with psycopg.connect(url, autocommit=True) as conn:
        removed_events = conn.execute(
            "select count(*), min(extract(epoch from removed_at - created_at)) from public.removed "
            "where tbl = 'events'"
        ).fetchone()
        assert removed_events is not None
        count, youngest_age = removed_events
        # Retention did its work, and never inside the window.
        assert count > emitted / 2, count
        assert youngest_age >= WINDOW
        # Nothing pending (leased ones are pending too) was ever removed...
        statuses = conn.execute(
            "select distinct status from public.removed where tbl = 'deliveries'"
        ).fetchall()
        assert set(statuses) <= {("delivered",), ("failed",)}
        # ...and the old unfinished deliveries are there still.
        assert conn.execute(
            "select count(*) from outbox.deliveries where id = any(%s) and status = 'pending'", (unfinished,)
        ).fetchone() == (len(unfinished),)
        runs = conn.execute(
            "select holder, started_at, finished_at from outbox.maintenance_runs order by started_at"
        ).fetchall()

    # The two workers both purged, one at a time: no pass began before the
    # previous one's last batch had ended.
    assert {r[0] for r in runs} == {"keeper-0", "keeper-1"}, runs
    for earlier, later in itertools.pairwise(runs):
        assert earlier[2] < later[1], (earlier, later)

    # A plateau: after two windows, the second half of the samples grows no
    # larger than the first half's largest (a little slack for page-granular
    # growth). Without retention it would grow by half again.
    settled = [size for at, size in sizes if at >= 2 * WINDOW]
    first, second = settled[: len(settled) // 2], settled[len(settled) // 2 :]
    assert max(second) <= max(first) * 1.15, [round(s / 1024) for _, s in sizes]


async def test_a_worker_behind_a_transaction_pooler_runs_retention(
    database_url: str, server_url: str, conn: psycopg.Connection[Any]
) -> None:
    """PgBouncer in transaction mode lends a server session per transaction:
    the lease row and per-batch transactions need nothing else."""
    skip_without_pgbouncer(server_url)
    hook = str(webhooks.create_webhook(conn, "shop", "https://receiver.example/", ["order.created"]).id)
    conn.execute(
        "with e as (insert into outbox.events (owner_id, event_type, data, created_at, dispatched_at) "
        "select 'shop', 'order.created', '{}', now() - interval '2 hours', now() from generate_series(1, 50) "
        "returning id) "
        "insert into outbox.deliveries (event_id, webhook_id, status, completed_at) "
        "select id, %s, 'delivered', now() from e",
        (hook,),
    )
    with pgbouncer.running(server_url, pool_mode="transaction", pool_size=3) as bouncer:
        worker = spawn_worker(
            bouncer.url(database_url), "pooled-keeper", pooler="transaction", retention="1h"
        )
        try:

            def removed() -> bool:
                row = conn.execute("select count(*) from outbox.events").fetchone()
                return row == (0,)

            await eventually(lambda: asyncio.to_thread(removed), timeout=30, what="old history removed")
        finally:
            kill(worker, 15)
            _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr.decode()[-2000:]
    runs = conn.execute(
        "select holder, events, deliveries from outbox.maintenance_runs where events > 0"
    ).fetchall()
    assert runs == [("pooled-keeper", 50, 50)]
