"""Quiet NOTIFY: emitters skip NOTIFY while a worker is busy, and a worker
lets go of "busy" only when no such emitter is uncommitted.

The protocol is tested on plain connections first (each step of the proof in
the comment above the emit trigger in sql/schema.sql), then end to end with
a worker that would otherwise only find events on a 10 s poll.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outbox_worker import emit, webhooks
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker

BUSY = "select pg_try_advisory_lock(1869968482, 2)"


def drain(listener: psycopg.Connection[Any]) -> list[str]:
    """Everything delivered to ``listener`` so far, up to a marker it sends itself."""
    listener.execute("notify outbox_marker")
    received: list[str] = []
    for note in listener.notifies(timeout=5):
        if note.channel == "outbox_marker":
            return received
        received.append(note.payload)
    raise AssertionError("marker notification never arrived")


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("listen outbox_events")
        conn.execute("listen outbox_marker")
        yield conn


def emit_committed(database_url: str, n: int = 1) -> None:
    with psycopg.connect(database_url) as app:
        for i in range(n):
            emit(app, "shop", "order.created", {"i": i})
            app.commit()


def test_emitters_skip_notify_only_while_a_worker_holds_busy(
    database_url: str, listener: psycopg.Connection[Any]
) -> None:
    emit_committed(database_url)
    assert drain(listener) == [""]  # nobody busy: every emitter notifies

    with psycopg.connect(database_url, autocommit=True) as worker:
        assert worker.execute(BUSY).fetchone() == (True,)
        emit_committed(database_url, 3)
        assert drain(listener) == []
        assert worker.execute("select outbox.release_busy()").fetchone() == (True,)
        emit_committed(database_url)
        assert drain(listener) == [""]

        assert worker.execute(BUSY).fetchone() == (True,)
    # The busy worker's session ended (as when it is killed): emitters notify again.
    emit_committed(database_url)
    assert drain(listener) == [""]


def test_release_waits_for_every_emitter_that_skipped_notify(
    database_url: str, listener: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as worker, psycopg.connect(database_url) as app:
        worker.execute(BUSY)
        emit(app, "shop", "order.created", {"late": True})  # skipped NOTIFY, not yet committed
        assert worker.execute("select outbox.release_busy()").fetchone() == (False,)
        app.commit()
        assert worker.execute("select outbox.release_busy()").fetchone() == (True,)
        # The worker's next claim sees the skipped event: it committed before the release.
        assert worker.execute(
            "select count(*) from outbox.events where dispatched_at is null"
        ).fetchone() == (1,)
        assert drain(listener) == []

        # A rolled-back emitter holds things up just as long, and no longer.
        worker.execute(BUSY)
        emit(app, "shop", "order.created", {"rolled": "back"})
        assert worker.execute("select outbox.release_busy()").fetchone() == (False,)
        app.rollback()
        assert worker.execute("select outbox.release_busy()").fetchone() == (True,)


def test_a_repeatable_read_emitter_notifies_after_the_release(
    database_url: str, listener: psycopg.Connection[Any]
) -> None:
    """Locks, not snapshots: a transaction whose snapshot predates the release
    still sees that nobody is busy any more."""
    with psycopg.connect(database_url, autocommit=True) as worker, psycopg.connect(database_url) as app:
        app.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        worker.execute(BUSY)
        app.execute("select count(*) from outbox.events")  # snapshot taken while busy
        assert worker.execute("select outbox.release_busy()").fetchone() == (True,)
        emit(app, "shop", "order.created", {"rr": True})
        app.commit()
        assert drain(listener) == [""]


def test_an_emitter_is_never_blocked_by_a_worker_that_fails_to_release(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as worker, psycopg.connect(database_url) as app:
        worker.execute(BUSY)
        emit(app, "shop", "order.created", {"first": True})
        assert worker.execute("select outbox.release_busy()").fetchone() == (False,)
        with psycopg.connect(database_url) as other:
            other.execute("set lock_timeout = '1s'")
            emit(other, "shop", "order.created", {"second": True})  # would raise on a lock wait
            other.commit()
        app.commit()


async def test_a_busy_worker_delivers_a_stream_without_notifications_and_wakes_for_the_next(
    database_url: str, conn: psycopg.Connection[Any], listener: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "shop", receiver.url("/h"), ["order.created"])
    poll = 10.0  # an event found by polling would take this long
    threads, per_thread = 4, 150
    async with running_worker(database_url, poll_interval=poll) as worker:
        assert worker.listener is not None
        await eventually(lambda: worker.listener is not None and worker.listener.connected, what="LISTEN up")
        stream = [
            threading.Thread(target=emit_committed, args=(database_url, per_thread)) for _ in range(threads)
        ]
        for t in stream:
            t.start()
        for t in stream:
            await asyncio.to_thread(t.join)
        last_commit = time.monotonic()
        total = threads * per_thread
        await eventually(
            lambda: len(receiver.requests) >= total, timeout=poll / 2, what=f"{total} deliveries"
        )
        drained_in = time.monotonic() - last_commit
        notifications = len(await asyncio.to_thread(drain, listener))

        # Idle again: the next lone event is notified and delivered at once.
        await asyncio.sleep(0.3)
        await asyncio.to_thread(emit_committed, database_url)
        await eventually(lambda: len(receiver.requests) > total, timeout=poll / 2, what="the lone event")
        assert await asyncio.to_thread(drain, listener) == [""]
    assert len(receiver.requests) == total + 1
    assert drained_in < poll / 2
    assert notifications < total  # the worker was busy for part of the stream at least
    print(
        f"\n{total} transactions, {notifications} notifications; "
        f"drained {drained_in * 1000:.0f} ms after the last commit"
    )


async def test_a_deliveries_nudge_wakes_a_sender_not_the_dispatcher(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """A busy peer tells the others about deliveries it had no room for."""
    hook = webhooks.create_webhook(conn, "shop", receiver.url("/h"), ["order.created"])
    async with running_worker(database_url, poll_interval=10.0):
        await asyncio.sleep(0.3)  # idle: its sender waits for the poll
        # Dispatched by "a peer": the delivery exists, unleased, and no event notification came.
        conn.execute("update outbox.config set notify = false")
        try:
            event_id = emit(conn, "shop", "order.created", {"nudged": True})
        finally:
            conn.execute("update outbox.config set notify = true")
        conn.execute(
            "update outbox.events set dispatched_at = now(), body = convert_to('{}', 'UTF8') where id = %s",
            (event_id,),
        )
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id) values (%s, %s)", (event_id, hook.id)
        )
        conn.execute("select pg_notify('outbox_events', 'deliveries')")
        await eventually(lambda: len(receiver.requests) == 1, timeout=5, what="the nudged delivery")
