"""The retention service against a real database: what a pass removes and
keeps, batches, the lease that lets one worker at a time purge, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool

from outbox_worker.logs import get_logger
from outbox_worker.retention import Retention, connector
from outbox_worker.sql import query
from tests.helpers import eventually, orphans, positional

HOUR = timedelta(hours=1)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=4, kwargs={"autocommit": True}) as p:
        yield p


def service(
    pool: AsyncConnectionPool[Any], url: str, holder: str, window: timedelta | None, **kw: Any
) -> Retention:
    return Retention(pool, connector(url, f"test {holder}"), window, holder, get_logger(), **kw)


def webhook(conn: psycopg.Connection[Any], name: str = "h") -> str:
    row = conn.execute(
        "select id from outbox.create_webhook('o', %s, array['order.created'])", (f"https://{name}.example/",)
    ).fetchone()
    assert row is not None
    return str(row[0])


def event(
    conn: psycopg.Connection[Any], age: str, deliveries: Sequence[tuple[str, int]] = (), *, hook: str = "",
    dispatched: bool = True, leased: bool = False,
) -> int:  # fmt: skip
    """An event ``age`` old with deliveries of (status, attempts logged) to ``hook``."""
    row = conn.execute(
        "insert into outbox.events (owner_id, event_type, data, created_at, dispatched_at) "
        "values ('o', 'order.created', '{}', now() - cast(%s as interval), case when %s then now() end) "
        "returning id",
        (age, dispatched),
    ).fetchone()
    assert row is not None
    event_id = int(row[0])
    for n, (status, attempts) in enumerate(deliveries):
        # Pending ones wait for a retry an hour out (or are leased for one),
        # so nothing here is due.
        delivery = conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id, status, attempts, next_attempt_at, "
            "leased_until, leased_by, completed_at) "
            "values (%s, %s, %s, %s, now() + interval '1 hour', "
            "case when %s then now() + interval '1 hour' end, case when %s then 'ghost' end, "
            "case when %s <> 'pending' then now() end) returning id",
            (
                event_id,
                hook if n == 0 else webhook(conn, f"h{event_id}-{n}"),
                status,
                attempts,
                leased,
                leased,
                status,
            ),
        ).fetchone()
        assert delivery is not None
        conn.execute(
            "insert into outbox.delivery_attempts "
            "(delivery_id, attempt, attempted_at, duration_ms, status_code) "
            "select %s, g, now(), 1.0, 500 from generate_series(1, %s) g",
            (delivery[0], attempts),
        )
    return event_id


def ids(conn: psycopg.Connection[Any]) -> set[int]:
    return {r[0] for r in conn.execute("select id from outbox.events").fetchall()}


async def test_a_pass_removes_finished_history_past_the_window_and_nothing_else(
    conn: psycopg.Connection[Any], database_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    hook = webhook(conn)
    delivered = event(conn, "2 hours", [("delivered", 1), ("delivered", 2)], hook=hook)
    failed = event(conn, "2 hours", [("failed", 4)], hook=hook)
    unmatched = event(conn, "3 hours")  # fanned out to no webhook
    half_done = event(conn, "2 hours", [("delivered", 1), ("pending", 1)], hook=hook)
    leased = event(conn, "5 hours", [("pending", 0)], hook=hook, leased=True)
    undispatched = event(conn, "2 hours", dispatched=False)
    recent = event(conn, "30 minutes", [("delivered", 1)], hook=hook)
    before = (
        REGISTRY.get_sample_value("outbox_retention_removed_rows_total", {"table": "delivery_attempts"}) or 0
    )

    totals = await service(pool, database_url, "a", HOUR, batch_events=2).run_pass()

    assert totals is not None and not totals.lost
    assert ids(conn) == {half_done, leased, undispatched, recent}
    assert (totals.events, totals.deliveries, totals.attempts) == (3, 3, 1 + 2 + 4)
    assert totals.batches >= 4  # 7 events, 2 looked at per batch
    assert orphans(conn) == (0, 0, 0)
    assert conn.execute("select count(*) from outbox.deliveries where event_id = any(%s)",
                        ([delivered, failed, unmatched],)).fetchone() == (0,)  # fmt: skip
    [run] = conn.execute(
        "select holder, events, deliveries, attempts, batches, started_at <= finished_at "
        "from outbox.maintenance_runs"
    ).fetchall()
    assert run == ("a", 3, 3, 7, totals.batches, True)
    after = REGISTRY.get_sample_value("outbox_retention_removed_rows_total", {"table": "delivery_attempts"})
    assert after == before + 7
    # Released: another worker may take the next pass at once.
    assert conn.execute("select expires_at <= now() from outbox.maintenance_leases").fetchone() == (True,)


async def test_off_keeps_all_history_but_still_expires_idempotency_keys(
    conn: psycopg.Connection[Any], database_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    old = event(conn, "400 days", [("delivered", 1)], hook=webhook(conn))
    conn.execute("insert into outbox.idempotency_keys (owner_id, key, event_id, created_at) values "
                 "('o', 'stale', 1, now() - interval '25 hours'), ('o', 'live', 2, now())")  # fmt: skip
    totals = await service(pool, database_url, "a", None).run_pass()
    assert totals is not None and (totals.events, totals.keys) == (0, 1)
    assert ids(conn) == {old}
    assert conn.execute("select key from outbox.idempotency_keys").fetchall() == [("live",)]


async def test_only_the_lease_holder_purges(
    conn: psycopg.Connection[Any], database_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    old = event(conn, "2 hours", [("delivered", 1)], hook=webhook(conn))
    conn.execute(
        "update outbox.maintenance_leases set holder = 'a', expires_at = now() + interval '1 minute'"
    )
    assert await service(pool, database_url, "b", HOUR).run_pass() is None
    assert ids(conn) == {old}
    # A holder that died: its lease lapses, and another worker takes over.
    conn.execute("update outbox.maintenance_leases set expires_at = now() - interval '1 second'")
    totals = await service(pool, database_url, "b", HOUR).run_pass()
    assert totals is not None and totals.events == 1 and ids(conn) == set()


async def test_a_worker_whose_lease_was_taken_stops_and_the_passes_never_overlap(
    conn: psycopg.Connection[Any], database_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    hook = webhook(conn)
    for _ in range(40):
        event(conn, "2 hours", [("delivered", 1)], hook=hook)
    # One event a batch, and pauses (~50x a batch) far longer than a's
    # lease: b finds it lapsed between two of a's batches.
    slow = service(pool, database_url, "a", HOUR, batch_events=1, duty=0.02, lease_seconds=0.05)
    first = asyncio.create_task(slow.run_pass())

    async def a_has_begun() -> bool:
        return len(await asyncio.to_thread(ids, conn)) < 40

    await eventually(a_has_begun, timeout=10, what="a's first batch")
    fast = service(pool, database_url, "b", HOUR)

    async def b_took_over() -> bool:
        return await fast.run_pass() is not None

    await eventually(b_took_over, timeout=10, what="b's pass")
    a = await asyncio.wait_for(first, 30)
    assert a is not None and a.lost and 0 < a.events < 40
    assert ids(conn) == set()
    runs = conn.execute(
        "select holder, started_at, finished_at, events from outbox.maintenance_runs order by started_at"
    ).fetchall()
    assert [r[0] for r in runs] == ["a", "b"]
    assert runs[0][2] < runs[1][1]  # a's last batch ended before b claimed the lease
    assert runs[0][3] + runs[1][3] == 40


def _deliveries_rows_read(node: dict[str, Any]) -> int:
    """Rows the plan read from outbox.deliveries: kept plus filtered out."""
    own = 0
    if node.get("Relation Name") == "deliveries" and node.get("Node Type") != "ModifyTable":
        own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    return own + sum(_deliveries_rows_read(child) for child in node.get("Plans", []))


def test_a_batch_reads_its_events_deliveries_not_the_backlog(conn: psycopg.Connection[Any]) -> None:
    """A batch's check for pending deliveries looks up each event's own.
    Analyzed while nearly all was delivered, the planner took the due index
    instead and read every pending row of a backlog per event: 7 s a batch
    beside a drain."""
    hook = webhook(conn)
    for _ in range(50):
        event(conn, "2 hours", [("delivered", 0)], hook=hook)
    conn.execute("analyze outbox.deliveries")
    conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id) "
        "select -g, %s from generate_series(1, 3000) g",  # a backlog, pending
        (hook,),
    )
    statement, order = positional(query("purge"))
    args = {"older_than": "now", "after_id": 0, "limit": 10}
    literals = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(args[n]) for n in order)
    conn.execute("prepare batch as " + statement)
    row = conn.execute(
        psycopg.sql.SQL("explain (analyze, format json) execute batch({})").format(literals)
    ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    assert len(ids(conn)) == 40  # the batch's 10 went
    assert _deliveries_rows_read(plan) <= 4 * 10, json.dumps(plan, indent=1)


async def test_a_pass_on_borrowed_connections_holds_none_between_batches(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """Serving many databases over a bounded set of connections, a pass
    borrows one per batch and gives it back before its pause."""
    hook = webhook(conn)
    for _ in range(6):
        event(conn, "2 hours", [("delivered", 1)], hook=hook)
    keeper = Retention(pool, pool.connection, HOUR, "lent", get_logger(), batch_events=2, per_batch=True)
    totals = await keeper.run_pass()
    assert totals is not None and (totals.events, totals.deliveries, totals.attempts) == (6, 6, 6)
    assert totals.batches >= 3 and ids(conn) == set()
    assert pool.get_stats().get("requests_num", 0) >= totals.batches + 2  # claim, batches, release
