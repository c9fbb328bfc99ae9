"""Events carry the emitting code's W3C trace context: by emit's parameter,
by a fused INSERT, or from the current OpenTelemetry span; a malformed one
is dropped, never refused."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from psycopg import sql

from outbox_worker import emit, emit_async, migrate
from tests.cli import run

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01"


def stored(conn: psycopg.Connection[Any], event_id: int) -> str | None:
    row = conn.execute("select traceparent from outbox.events where id = %s", (event_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (VALID, VALID),
        (VALID.upper(), VALID),  # read loosely, stored as W3C writes it
        ("01" + VALID[2:] + "-more", "01" + VALID[2:]),  # a later version: its first four fields
        (VALID[:-2] + "00", VALID[:-2] + "00"),  # not sampled: kept as the emitter decided
        ("garbage", None),
        ("ff" + VALID[2:], None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        ("", None),
    ],
)
def test_emit_stores_a_valid_context_and_drops_a_malformed_one(
    conn: psycopg.Connection[Any], given: str, kept: str | None
) -> None:
    by_function = emit(conn, "v", "order.created", {}, traceparent=given)
    row = conn.execute(
        "insert into outbox.events (owner_id, event_type, data, traceparent)"
        " values ('v', 'order.created', '{}', %s) returning id",
        (given,),
    ).fetchone()
    assert row is not None
    assert stored(conn, by_function) == kept
    assert stored(conn, row[0]) == kept


def test_every_earlier_call_of_emit_still_works(conn: psycopg.Connection[Any]) -> None:
    event_id = conn.execute(
        "select outbox.emit('v', 'order.created', '{}'), outbox.emit('v', 'order.created', '{}', 'k'),"
        " outbox.emit('v', 'order.created', '{}', null, 'i'),"
        " outbox.emit('v', 'order.created', '{}', traceparent => %s)",
        (VALID,),
    ).fetchone()
    assert event_id is not None and all(event_id)
    assert stored(conn, event_id[3]) == VALID
    assert stored(conn, event_id[0]) is None


def test_emit_takes_the_current_spans_context(conn: psycopg.Connection[Any]) -> None:
    outside = emit(conn, "v", "order.created", {})
    context = trace.SpanContext(int(TRACE, 16), 0xABCDEF, is_remote=False, trace_flags=trace.TraceFlags(1))
    with trace.use_span(trace.NonRecordingSpan(context)):
        inside = emit(conn, "v", "order.created", {})
        explicit = emit(conn, "v", "order.created", {}, traceparent=VALID)
    assert stored(conn, outside) is None
    assert stored(conn, inside) == f"00-{TRACE}-0000000000abcdef-01"
    assert stored(conn, explicit) == VALID  # a value given wins


async def test_emit_async_takes_the_current_spans_context(
    conn: psycopg.Connection[Any], aconn: psycopg.AsyncConnection[Any]
) -> None:
    context = trace.SpanContext(int(TRACE, 16), 0x1234, is_remote=False, trace_flags=trace.TraceFlags(0))
    with trace.use_span(trace.NonRecordingSpan(context)):
        event_id = await emit_async(aconn, "v", "order.created", {})
    await aconn.commit()
    assert stored(conn, event_id) == f"00-{TRACE}-0000000000001234-00"


def test_the_cli_emits_with_a_trace_context(database_url: str, conn: psycopg.Connection[Any]) -> None:
    result = run(
        database_url, "--json", "emit", "--owner", "v", "--type", "order.created", "--data", "{}",
        "--traceparent", VALID,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [emitted] = json.loads(result.stdout)
    assert stored(conn, emitted["event_id"]) == VALID


@pytest.fixture
def app_role(conn: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"outbox_tracing_app_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("create role {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def test_the_migration_keeps_who_may_emit(make_database: Any, app_role: str) -> None:
    """emit() is a new function at this revision: an app granted the old one
    keeps emitting, by emit or by INSERT, without a new grant (and back)."""
    url = make_database("outbox_trace_grants")
    migrate.upgrade(url, "0006")
    role = sql.Identifier(app_role)
    with psycopg.connect(url, autocommit=True) as db:
        old_emit = "outbox.emit(text, text, jsonb, text, text)"
        db.execute(sql.SQL(f"grant execute on function {old_emit} to {{}}").format(role))
        db.execute(sql.SQL("grant insert (owner_id, event_type, data) on outbox.events to {}").format(role))
    migrate.upgrade(url)

    def may(check: str) -> bool:
        with psycopg.connect(url) as db:
            row = db.execute(check, (app_role,)).fetchone()
            assert row is not None
            return bool(row[0])

    new_emit = "outbox.emit(text, text, jsonb, text, text, text)"
    try:
        assert may(f"select has_function_privilege(%s, '{new_emit}', 'execute')")
        assert may("select has_column_privilege(%s, 'outbox.events', 'traceparent', 'insert')")
        migrate.downgrade(url, "0006")
        assert may(f"select has_function_privilege(%s, '{old_emit}', 'execute')")
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.SQL("drop owned by {}").format(role))
