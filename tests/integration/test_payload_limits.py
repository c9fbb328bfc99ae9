"""Payloads PostgreSQL stores but JSON readers cannot: refused at emit, and
failed one by one by the worker when written before the check existed."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox_worker import db, emit, errors, webhooks
from outbox_worker.signing import UnreadablePayload, load_payload
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import delivery_states, running_worker, settled


def nested(depth: int) -> dict[str, Any]:
    """An object whose innermost value sits inside ``depth`` objects and arrays."""
    value: Any = 1
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"deep": value}


def nested_text(depth: int) -> str:
    """The same as :func:`nested`, as JSON text (Python cannot dump it that deep)."""
    return '{"deep":' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"


HUGE_INTEGER = '{"n": 1' + "0" * 5000 + "}"  # beyond Python's 4,300-digit int parse
HUGE_FLOAT = '{"n": 1e400}'  # jsonb prints it as 401 digits; JavaScript reads Infinity
# 401 digits and a fraction: Python reads floats, and this one is infinite.
HUGE_FRACTION = '{"n": 1' + "0" * 400 + ".5}"
TOO_DEEP = nested_text(1500)  # beyond Python's recursion limit


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (nested_text(101), "limit of 100"),
        (HUGE_INTEGER, "limit of +/-1e308"),
        (HUGE_FLOAT, "limit of +/-1e308"),
        ('{"n": [-1e309]}', "limit of +/-1e308"),
    ],
    ids=["depth-101", "5001-digit-integer", "1e400", "negative"],
)
def test_emit_refuses_what_json_readers_cannot_read(
    conn: psycopg.Connection[Any], data: str, message: str
) -> None:
    for statement in (
        "select outbox.emit('v', 'order.created', %s::jsonb)",
        # The plain INSERT form goes through the same check.
        "insert into outbox.events (owner_id, event_type, data) values ('v', 'order.created', %s::jsonb)",
    ):
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(statement, (data,))
        refused = db.translate(raised.value)
        assert isinstance(refused, errors.PayloadOutOfRange), refused
        assert refused.sqlstate == "OW012"
        assert message in str(refused)
    assert conn.execute("select count(*) from outbox.events").fetchone() == (0,)


@pytest.mark.parametrize("data", [nested(101), {"n": 10**400}], ids=["depth-101", "1e400"])
def test_the_python_emit_reports_the_refusal(conn: psycopg.Connection[Any], data: dict[str, Any]) -> None:
    with pytest.raises(errors.PayloadOutOfRange, match="limit"):
        emit(conn, "v", "order.created", data)


def test_emit_takes_what_stays_within_the_limits(conn: psycopg.Connection[Any]) -> None:
    emit(conn, "v", "order.created", nested(100))
    emit(conn, "v", "order.created", {"n": [1e308, -1e308, 2**64, 1e-300], "s": "9" * 5000})
    assert conn.execute("select count(*) from outbox.events").fetchone() == (2,)


@pytest.mark.parametrize("text", [HUGE_INTEGER, HUGE_FLOAT, HUGE_FRACTION, TOO_DEEP])
def test_the_worker_reader_marks_what_it_cannot_read(text: str) -> None:
    value = load_payload(text)
    assert isinstance(value, UnreadablePayload)
    assert value.reason


def legacy_event(conn: psycopg.Connection[Any], owner: str, data: str) -> int:
    """An event written before emit checked payloads: the trigger is bypassed."""
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        row = conn.execute(
            "insert into outbox.events (owner_id, event_type, data) values (%s, 'order.created', %s::jsonb) "
            "returning id",
            (owner, data),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_one_unreadable_payload_fails_only_its_own_deliveries(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "x", receiver.url("/x"), ["order.created"])
    webhooks.create_webhook(conn, "y", receiver.url("/y"), ["order.created"])
    bad = [legacy_event(conn, "x", text) for text in (HUGE_INTEGER, TOO_DEEP, HUGE_FRACTION)]
    good = emit(conn, "y", "order.created", {"id": "ok"})

    async with running_worker(database_url):
        await eventually(lambda: settled(database_url, 4), timeout=15, what="4 settled deliveries")

    assert [r.path for r in receiver.requests] == ["/y"]
    assert json.loads(receiver.requests[0].body)["data"] == {"id": "ok"}
    assert delivery_states(database_url) == {"delivered": 1, "failed": 3}
    rows = conn.execute(
        "select event_id, attempt, error_class, error, delivery_status::text from outbox.delivery_log "
        "order by event_id"
    ).fetchall()
    assert [r[0] for r in rows] == [*bad, good]
    for event_id, attempt, error_class, error, status in rows[:3]:
        assert (attempt, error_class, status) == (1, "invalid_payload", "failed"), event_id
        assert "cannot be read" in error
    assert rows[3][2:] == (None, None, "delivered")


async def test_a_claimed_delivery_with_an_unreadable_payload_fails_alone(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """The claim path (a dispatcher died before storing the bytes) reads the
    payload too: the bad row fails, the good one in the same claim goes out."""
    x = webhooks.create_webhook(conn, "x", receiver.url("/x"), ["order.created"])
    y = webhooks.create_webhook(conn, "y", receiver.url("/y"), ["order.created"])
    bad = legacy_event(conn, "x", HUGE_INTEGER)
    good = emit(conn, "y", "order.created", {"id": "ok"})
    conn.execute("update outbox.events set dispatched_at = now()")
    for event_id, hook in ((bad, x), (good, y)):
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id, next_attempt_at, leased_until, leased_by) "
            "values (%s, %s, now() - interval '1 second', now() - interval '1 second', 'dead-worker')",
            (event_id, hook.id),
        )

    async with running_worker(database_url):
        await eventually(lambda: settled(database_url, 2), timeout=15, what="2 settled deliveries")

    assert [r.path for r in receiver.requests] == ["/y"]
    assert conn.execute(
        "select error_class from outbox.delivery_log where event_id = %s", (bad,)
    ).fetchall() == [("invalid_payload",)]
