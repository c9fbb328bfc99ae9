"""emit() joins the caller's transaction on every connection type a Python monolith holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from outbox_worker import emit, emit_async, errors
from outbox_worker.db import sqlalchemy_url


def events(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select owner_id, event_type, data from outbox.events order by id").fetchall()


@pytest.fixture
def sa_engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
async def sa_async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("commit", [True, False])
def test_psycopg_sync(database_url: str, conn: psycopg.Connection[Any], commit: bool) -> None:
    with psycopg.connect(database_url) as app:
        app.execute("create temp table orders (id int)")  # the business write
        app.execute("insert into orders values (1)")
        event_id = emit(app, "shop", "order.created", {"id": 1, "name": "Zoë"})
        assert isinstance(event_id, int)
        app.commit() if commit else app.rollback()
    assert events(conn) == ([("shop", "order.created", {"id": 1, "name": "Zoë"})] if commit else [])


@pytest.mark.parametrize("commit", [True, False])
async def test_psycopg_async(database_url: str, conn: psycopg.Connection[Any], commit: bool) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as app:
        await emit_async(app, "shop", "order.created", {"id": 2})
        await (app.commit() if commit else app.rollback())
    assert len(events(conn)) == (1 if commit else 0)


@pytest.mark.parametrize("commit", [True, False])
def test_sqlalchemy_connection(sa_engine: Engine, conn: psycopg.Connection[Any], commit: bool) -> None:
    with sa_engine.connect() as app:
        app.execute(text("select 1"))
        emit(app, "shop", "order.created", {"id": 3})
        app.commit() if commit else app.rollback()
    assert len(events(conn)) == (1 if commit else 0)


@pytest.mark.parametrize("commit", [True, False])
def test_sqlalchemy_session(sa_engine: Engine, conn: psycopg.Connection[Any], commit: bool) -> None:
    with Session(sa_engine) as session:
        emit(session, "shop", "order.status_changed", {"id": 4, "status": "FITTING_READY"})
        session.commit() if commit else session.rollback()
    assert len(events(conn)) == (1 if commit else 0)


def test_sqlalchemy_session_begin_block_rolls_back_on_exception(
    sa_engine: Engine, conn: psycopg.Connection[Any]
) -> None:
    with pytest.raises(RuntimeError), Session(sa_engine) as session, session.begin():
        emit(session, "shop", "order.created", {"id": 5})
        raise RuntimeError("business logic failed after emit")
    assert events(conn) == []


@pytest.mark.parametrize("commit", [True, False])
async def test_sqlalchemy_async_connection(
    sa_async_engine: AsyncEngine, conn: psycopg.Connection[Any], commit: bool
) -> None:
    async with sa_async_engine.connect() as app:
        await emit_async(app, "shop", "order.created", {"id": 6})
        await (app.commit() if commit else app.rollback())
    assert len(events(conn)) == (1 if commit else 0)


@pytest.mark.parametrize("commit", [True, False])
async def test_sqlalchemy_async_session(
    sa_async_engine: AsyncEngine, conn: psycopg.Connection[Any], commit: bool
) -> None:
    async with AsyncSession(sa_async_engine) as session:
        await emit_async(session, "shop", "order.created", {"id": 7})
        await (session.commit() if commit else session.rollback())
    assert len(events(conn)) == (1 if commit else 0)


def test_sqlalchemy_errors_are_mapped(sa_engine: Engine) -> None:
    with Session(sa_engine) as session, pytest.raises(errors.UnknownEventType, match='"order.exploded"'):
        emit(session, "shop", "order.exploded", {})


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ([1, 2], errors.InvalidPayload, "must be a JSON object"),
        ("text", errors.InvalidPayload, "must be a JSON object"),
        ({"x": object()}, errors.InvalidPayload, "not JSON-serialisable"),
        ({"x": float("nan")}, errors.InvalidPayload, "not JSON-serialisable"),
    ],
)
def test_bad_payloads_are_refused_before_the_database(
    conn: psycopg.Connection[Any], data: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        emit(conn, "shop", "order.created", data)
    assert events(conn) == []


def test_nul_characters_are_refused_clearly(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.InvalidPayload, match="unsupported Unicode escape sequence"):
        emit(conn, "shop", "order.created", {"name": "a\x00b"})
    assert events(conn) == []


def test_oversized_payload_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update outbox.config set max_payload_bytes = 1000")
    with pytest.raises(
        errors.PayloadTooLarge, match=r"payload too large: \d+ bytes, the limit is 1000 bytes"
    ):
        emit(conn, "shop", "order.created", {"blob": "x" * 2000})
    emit(conn, "shop", "order.created", {"blob": "x" * 500})
    assert len(events(conn)) == 1


def test_unknown_event_type_and_bad_owner(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.UnknownEventType, match='unknown event type "order.teleported"'):
        emit(conn, "shop", "order.teleported", {})
    with pytest.raises(errors.InvalidOwnerId):
        emit(conn, "", "order.created", {})
    assert events(conn) == []


def test_plain_insert_is_validated_too(conn: psycopg.Connection[Any]) -> None:
    # Apps in other languages may INSERT directly; the same rules apply.
    with pytest.raises(psycopg.Error) as unknown:
        conn.execute("insert into outbox.events (owner_id, event_type, data) values ('o', 'nope', '{}')")
    assert unknown.value.sqlstate == "OW002"
    with pytest.raises(psycopg.Error) as not_object:
        conn.execute(
            "insert into outbox.events (owner_id, event_type, data) values ('o', 'order.created', '[]')"
        )
    assert not_object.value.sqlstate == "OW006"
    conn.execute("insert into outbox.events (owner_id, event_type, data) values ('o', 'order.created', '{}')")
    assert len(events(conn)) == 1


def test_sql_emit_from_psql_style_call(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("""select outbox.emit('vendor-1','order.created','{"id":"x"}')""")
    assert events(conn) == []
    row = conn.execute("""select outbox.emit('vendor-1','order.created','{"id":"x"}')""").fetchone()
    assert row is not None and isinstance(row[0], int)
    assert events(conn) == [("vendor-1", "order.created", {"id": "x"})]


def test_one_notification_per_transaction(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener, psycopg.connect(database_url) as app:
        listener.execute("listen outbox_events")
        for i in range(50):  # many statements, many rows: still one wake-up
            emit(app, "shop", "order.created", {"i": i})
        app.execute(
            "insert into outbox.events (owner_id, event_type, data) "
            "select 'shop', 'order.created', jsonb_build_object('i', g) from generate_series(1, 100) g"
        )
        app.commit()
        emit(app, "shop", "order.created", {"second": "transaction"})
        app.commit()
        with app.transaction(force_rollback=True):
            emit(app, "shop", "order.created", {"rolled": "back"})
        # Notifications are delivered in commit order; a marker NOTIFY after
        # both commits tells us everything before it has arrived.
        app.execute("notify outbox_marker")
        app.commit()
        listener.execute("listen outbox_marker")
        app.execute("notify outbox_marker")
        app.commit()
        received = []
        for note in listener.notifies(timeout=5):
            if note.channel == "outbox_marker":
                break
            received.append(note)
    assert [(n.channel, n.payload) for n in received] == [("outbox_events", ""), ("outbox_events", "")]
