"""The compiled emit trigger follows the catalogue it was compiled from.

outbox.events_emit() carries the event type names, the payload limit and
config.notify as constants; these tests change the tables from one session
and emit from another that already ran the old copy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from outbox_worker import emit, errors, webhooks
from tests.helpers import compiled_emit_trigger


@pytest.fixture
def app(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An emitting session that has already run (and cached) the current trigger."""
    with psycopg.connect(database_url, autocommit=True) as c:
        emit(c, "shop", "order.created", {"warm": True})
        yield c


@pytest.fixture
def scratch_types(conn: psycopg.Connection[Any]) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    conn.execute("delete from outbox.event_types where name = any(%s)", (names,))


def test_a_new_event_type_is_accepted_at_once_and_a_removed_one_refused(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any], scratch_types: list[str]
) -> None:
    scratch_types.append("shipment.sent")
    with pytest.raises(errors.UnknownEventType):
        emit(app, "shop", "shipment.sent", {})
    webhooks.add_event_type(conn, "shipment.sent", "A parcel left the warehouse")
    assert '"shipment.sent"' not in compiled_emit_trigger(conn)  # the literal holds bare names
    assert "shipment.sent" in compiled_emit_trigger(conn)
    emit(app, "shop", "shipment.sent", {"n": 1})
    conn.execute("delete from outbox.event_types where name = 'shipment.sent'")
    assert "shipment.sent" not in compiled_emit_trigger(conn)
    with pytest.raises(errors.UnknownEventType, match='unknown event type "shipment.sent"'):
        emit(app, "shop", "shipment.sent", {"n": 2})


def test_a_new_payload_limit_applies_at_once(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    emit(app, "shop", "order.created", {"blob": "x" * 2000})
    conn.execute("update outbox.config set max_payload_bytes = 1000")
    with pytest.raises(errors.PayloadTooLarge, match="the limit is 1000 bytes"):
        emit(app, "shop", "order.created", {"blob": "x" * 2000})
    conn.execute("update outbox.config set max_payload_bytes = 100000")
    emit(app, "shop", "order.created", {"blob": "x" * 2000})


def test_a_stale_compiled_copy_never_refuses_what_the_tables_accept(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any], scratch_types: list[str]
) -> None:
    """The constants are a fast path: a miss asks the tables (a copy compiled
    a moment early, by concurrent changes at REPEATABLE READ)."""
    conn.execute("update outbox.config set max_payload_bytes = 1000")
    conn.execute("alter table outbox.event_types disable trigger event_types_compile")
    conn.execute("alter table outbox.config disable trigger config_compile")
    try:
        scratch_types.append("parcel.lost")
        conn.execute("insert into outbox.event_types (name) values ('parcel.lost')")
        conn.execute("update outbox.config set max_payload_bytes = 5000")
        source = compiled_emit_trigger(conn)
        assert "parcel.lost" not in source and "if size > 1000 then" in source
        emit(app, "shop", "parcel.lost", {"blob": "x" * 2000})
        too_large = r"payload too large: \d+ bytes, the limit is 5000 bytes"
        with pytest.raises(errors.PayloadTooLarge, match=too_large):
            emit(app, "shop", "parcel.lost", {"blob": "x" * 6000})
        with pytest.raises(errors.UnknownEventType):
            emit(app, "shop", "parcel.found", {})
    finally:
        conn.execute("alter table outbox.event_types enable trigger event_types_compile")
        conn.execute("alter table outbox.config enable trigger config_compile")


def test_concurrent_catalogue_changes_both_reach_the_compiled_copy(
    conn: psycopg.Connection[Any], database_url: str, scratch_types: list[str]
) -> None:
    scratch_types.extend(["race.one", "race.two"])
    errors_seen: list[BaseException] = []
    with psycopg.connect(database_url) as first:
        webhooks.add_event_type(first, "race.one")  # compiled, not committed: holds the compile lock

        def second() -> None:
            try:
                with psycopg.connect(database_url, autocommit=True) as other:
                    webhooks.add_event_type(other, "race.two")
            except BaseException as exc:  # reported below
                errors_seen.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the first compile to commit
        first.commit()
    thread.join(10)
    assert not thread.is_alive() and errors_seen == []
    source = compiled_emit_trigger(conn)
    assert "race.one" in source and "race.two" in source


def test_notify_can_be_turned_off_and_on(database_url: str, conn: psycopg.Connection[Any]) -> None:
    def notified_by_one_emit() -> list[str]:
        with psycopg.connect(database_url, autocommit=True) as listener:
            listener.execute("listen outbox_events")
            listener.execute("listen outbox_marker")
            emit(conn, "shop", "order.created", {})
            conn.execute("notify outbox_marker")  # delivered in commit order: everything before it is in
            received = []
            for note in listener.notifies(timeout=5):
                if note.channel == "outbox_marker":
                    break
                received.append(note.channel)
            return received

    conn.execute("update outbox.config set notify = false")
    try:
        assert "pg_notify" not in compiled_emit_trigger(conn)
        assert notified_by_one_emit() == []
    finally:
        conn.execute("update outbox.config set notify = true")
    assert notified_by_one_emit() == ["outbox_events"]


def test_the_compiler_is_not_a_function_anyone_may_call(conn: psycopg.Connection[Any]) -> None:
    # SECURITY DEFINER: only the triggers run it, never a role directly.
    row = conn.execute(
        "select prosecdef, has_function_privilege('public', p.oid, 'execute') from pg_proc p "
        "where p.oid = 'outbox.compile_emit_trigger()'::regprocedure"
    ).fetchone()
    assert row == (True, False)
