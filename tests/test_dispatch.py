"""Dispatcher: one statement before the first POST, the bytes stored after."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from outbox_worker import emit, webhooks
from outbox_worker.completer import Completer
from outbox_worker.delivery import Job, Outcome
from outbox_worker.dispatch import Dispatcher
from outbox_worker.logs import get_logger
from tests.workers import settings


def stored_body(conn: psycopg.Connection[Any], event_id: int) -> bytes | None:
    row = conn.execute("select body from outbox.events where id = %s", (event_id,)).fetchone()
    assert row is not None
    return None if row[0] is None else bytes(row[0])


def an_event_for_two_webhooks(conn: psycopg.Connection[Any]) -> int:
    for path in ("a", "b"):
        webhooks.create_webhook(conn, "v", f"https://example.com/{path}", ["order.created"])
    return emit(conn, "v", "order.created", {"id": "ord_1"})


async def dispatch_once(database_url: str, slots: int) -> tuple[list[Job], AsyncConnectionPool[Any]]:
    handed: list[Job] = []
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    dispatcher = Dispatcher(
        pool,
        settings(database_url),
        None,
        reserve_slots=lambda wanted: min(wanted, slots),
        hand_over=lambda jobs, reserved: handed.extend(jobs),
        busy_webhooks=list,
        log=get_logger(),
    )
    assert await dispatcher.dispatch_batch() == 1
    return handed, pool


async def test_bytes_of_a_fully_leased_event_ride_with_its_first_outcome(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    event_id = an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=10)
    try:
        # Both deliveries leased to us: nothing else was written before the sends.
        assert len(handed) == 2
        assert stored_body(conn, event_id) is None
        assert [job.store_body for job in handed] == [True, False]  # one job carries the bytes
        completer = Completer(pool, settings(database_url), get_logger())
        for job in handed:
            completer.record(
                Outcome(job, "delivered", 0.0, datetime.now(UTC), 1.0, status_code=200, response_body="")
            )
        await completer.flush()
    finally:
        await pool.close()
    assert stored_body(conn, event_id) == handed[0].body == handed[1].body
    assert conn.execute("select count(*) from outbox.deliveries where status = 'delivered'").fetchone() == (
        2,
    )


async def test_bytes_of_an_event_left_for_other_workers_are_stored_at_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    event_id = an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=1)
    await pool.close()
    # One delivery is ours, the other any worker may claim now: it must find
    # the bytes we send, so they are stored before the dispatcher returns.
    assert len(handed) == 1
    assert not handed[0].store_body
    assert stored_body(conn, event_id) == handed[0].body


def test_a_claim_locks_no_more_rows_than_it_keeps(database_url: str, conn: psycopg.Connection[Any]) -> None:
    """One webhook, a cap of 2 per webhook, room for 10: the claim keeps 2,
    and must not hold the other 8 locked (hidden from other workers) while
    its statement runs."""
    from outbox_worker.sql import query

    webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"])
    for n in range(10):
        emit(conn, "v", "order.created", {"n": n})
    params = {"limit": 200, "lease_limit": 0, "busy_webhooks": [], "per_webhook": 64}
    conn.execute(query("dispatch"), {**params, "lease_seconds": 30, "worker_id": "d"})  # all unleased
    with psycopg.connect(database_url) as claimer:  # a transaction: its locks stay until rollback
        claimed = claimer.execute(
            query("claim_deliveries"),
            {"limit": 10, "busy_webhooks": [], "per_webhook": 2, "lease_seconds": 30, "worker_id": "w"},
        ).fetchall()
        assert len(claimed) == 2
        free = conn.execute(
            "select count(*) from (select id from outbox.deliveries for update skip locked) s"
        ).fetchone()
        claimer.rollback()
    assert free == (8,)
