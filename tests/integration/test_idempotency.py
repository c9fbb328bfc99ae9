"""Idempotency and ordering keys on emit: one event per (owner, key) within
the window, race-free between open transactions, and purge after it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from outbox_worker import InvalidIdempotencyKey, InvalidOrderingKey, emit, emit_async
from outbox_worker.sql import query
from tests.helpers import wait_for


def count(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def test_a_repeated_key_returns_the_first_event_and_creates_nothing(conn: psycopg.Connection[Any]) -> None:
    first = emit(conn, "v", "order.created", {"id": 1}, idempotency_key="order-1-created")
    again = emit(conn, "v", "order.created", {"id": 1, "retry": True}, idempotency_key="order-1-created")
    other_owner = emit(conn, "w", "order.created", {"id": 1}, idempotency_key="order-1-created")
    other_key = emit(conn, "v", "order.created", {"id": 1}, idempotency_key="order-1-paid")
    assert again == first and len({first, other_owner, other_key}) == 3
    rows = conn.execute("select id, owner_id, idempotency_key, data from outbox.events order by id")
    assert rows.fetchall() == [
        (first, "v", "order-1-created", {"id": 1}),
        (other_owner, "w", "order-1-created", {"id": 1}),
        (other_key, "v", "order-1-paid", {"id": 1}),
    ]
    assert emit(conn, "v", "order.created", {"id": 2}) != emit(conn, "v", "order.created", {"id": 2})


def test_the_plain_insert_skips_a_duplicate_row(conn: psycopg.Connection[Any]) -> None:
    """The fused INSERT form: a duplicate is not inserted (nor returned),
    within one statement too."""
    emit(conn, "v", "order.created", {"id": 1}, idempotency_key="k1")
    inserted = conn.execute(
        "insert into outbox.events (owner_id, event_type, data, idempotency_key) values "
        "('v', 'order.created', '{}', 'k1'), ('v', 'order.created', '{}', 'k2'), "
        "('v', 'order.created', '{}', 'k2') returning idempotency_key"
    ).fetchall()
    assert inserted == [("k2",)]
    assert count(conn, "select count(*) from outbox.events") == 2


async def test_the_async_form_and_ordering_keys(aconn: psycopg.AsyncConnection[Any]) -> None:
    first = await emit_async(aconn, "v", "order.created", {}, ordering_key="cust-7", idempotency_key="a")
    assert await emit_async(aconn, "v", "order.created", {}, idempotency_key="a") == first
    cur = await aconn.execute("select ordering_key, idempotency_key from outbox.events")
    assert await cur.fetchall() == [("cust-7", "a")]


@pytest.mark.parametrize("key", ["", "x" * 256, "line\nbreak", "nul\x01"])
def test_malformed_keys_are_refused(conn: psycopg.Connection[Any], key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey, match="invalid idempotency key: must be 1-255 characters"):
        emit(conn, "v", "order.created", {}, idempotency_key=key)
    with pytest.raises(InvalidOrderingKey, match="invalid ordering key: must be 1-255 characters"):
        emit(conn, "v", "order.created", {}, ordering_key=key)
    with pytest.raises(psycopg.Error) as raw:
        conn.execute(
            "insert into outbox.events (owner_id, event_type, data, idempotency_key) values "
            "('v', 'order.created', '{}', %s)",
            (key,),
        )
    assert raw.value.sqlstate == "OW031"
    assert count(conn, "select count(*) from outbox.events") == 0
    assert count(conn, "select count(*) from outbox.idempotency_keys") == 0


def _waiting_for_a_lock(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
    return row == ("Lock",)


def _emit_in_thread(database_url: str, key: str) -> tuple[threading.Thread, dict[str, Any]]:
    """Emit with ``key`` in a transaction of its own, in a thread; the
    result holds its backend pid at once and its event id once it returns."""
    result: dict[str, Any] = {}
    ready = threading.Event()

    def second() -> None:
        with psycopg.connect(database_url) as other:
            result["pid"] = other.info.backend_pid
            ready.set()
            result["id"] = emit(other, "v", "order.created", {"by": "second"}, idempotency_key=key)

    thread = threading.Thread(target=second)
    thread.start()
    assert ready.wait(10)
    return thread, result


@pytest.mark.parametrize("first_commits", [True, False])
def test_two_open_transactions_with_one_key_end_as_one_event(
    database_url: str, conn: psycopg.Connection[Any], first_commits: bool
) -> None:
    """The second waits for the first: it returns the first's event once
    the first commits, and inserts its own if the first rolls back."""
    with psycopg.connect(database_url) as first:
        first_id = emit(first, "v", "order.created", {"by": "first"}, idempotency_key="k")
        thread, second = _emit_in_thread(database_url, "k")
        wait_for(lambda: _waiting_for_a_lock(conn, second["pid"]), what="the second emit to wait")
        assert "id" not in second
        first.commit() if first_commits else first.rollback()
    thread.join(10)
    assert not thread.is_alive()
    events = conn.execute("select id, data from outbox.events").fetchall()
    if first_commits:
        assert second["id"] == first_id and events == [(first_id, {"by": "first"})]
    else:
        assert second["id"] != first_id and events == [(second["id"], {"by": "second"})]
    assert conn.execute("select event_id from outbox.idempotency_keys").fetchall() == [(events[0][0],)]


def test_at_repeatable_read_the_second_fails_to_serialise_and_a_retry_sees_the_first(
    database_url: str,
) -> None:
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        second.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        second.execute("select 1")  # its snapshot: before the first commits
        first_id = emit(first, "v", "order.created", {}, idempotency_key="k")
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            emit(second, "v", "order.created", {}, idempotency_key="k")
        second.rollback()
        assert emit(second, "v", "order.created", {}, idempotency_key="k") == first_id


def _age_keys(conn: psycopg.Connection[Any], interval: str) -> None:
    conn.execute("update outbox.idempotency_keys set created_at = now() - %s::interval", (interval,))


def test_a_key_past_the_window_makes_a_new_event_and_purge_removes_it(conn: psycopg.Connection[Any]) -> None:
    first = emit(conn, "v", "order.created", {}, idempotency_key="k")
    emit(conn, "v", "order.created", {}, idempotency_key="live")
    conn.execute("update outbox.config set idempotency_window = '1 hour'")
    try:
        conn.execute("update outbox.idempotency_keys set created_at = now() - interval '2 h' where key = 'k'")
        # Not purged yet: past the window all the same, so it counts for nothing.
        second = emit(conn, "v", "order.created", {}, idempotency_key="k")
        assert second != first
        assert emit(conn, "v", "order.created", {}, idempotency_key="k") == second
        _age_keys(conn, "61 minutes")
        emit(conn, "v", "order.created", {}, idempotency_key="fresh")
        batch = {"older_than": "-infinity", "after_id": 0}
        purged = conn.execute(query("purge"), {**batch, "limit": 1}).fetchone()
        assert purged is not None and purged[:2] == (0, 1)  # a batch of one: the oldest expired key
        purged = conn.execute(query("purge"), {**batch, "limit": 10}).fetchone()
        assert purged is not None and purged[:2] == (0, 1)
        assert conn.execute("select key from outbox.idempotency_keys").fetchall() == [("fresh",)]
    finally:
        conn.execute("update outbox.config set idempotency_window = default")


def test_the_window_must_be_positive(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update outbox.config set idempotency_window = '0'")


@pytest.mark.parametrize(
    "forget",
    [
        lambda conn: conn.execute("truncate outbox.events restart identity"),
        lambda conn: conn.execute("truncate outbox.events, outbox.deliveries restart identity"),
    ],
    ids=["events", "events and deliveries"],
)
def test_truncating_the_events_forgets_their_keys(
    conn: psycopg.Connection[Any], forget: Callable[[psycopg.Connection[Any]], Any]
) -> None:
    """Their ids start again: a kept key would name somebody else's event."""
    emit(conn, "v", "order.created", {}, idempotency_key="k")
    forget(conn)
    assert count(conn, "select count(*) from outbox.idempotency_keys") == 0
    assert emit(conn, "v", "order.created", {"new": True}, idempotency_key="k") == 1
