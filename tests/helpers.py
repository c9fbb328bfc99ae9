"""Test helpers: waiting on conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from outbox_worker.sql import query

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r}")
        time.sleep(interval)


async def eventually(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """:func:`wait_for` inside an event loop; ``condition`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition!r}")
        await asyncio.sleep(interval)


def positional(statement: str) -> tuple[str, list[str]]:
    """A queries.sql statement with ``$1, $2 ...`` for its ``%(name)s``
    placeholders (for PREPARE), and the names in parameter order."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)[sb]", number, statement), order


def compiled_emit_trigger(conn: Any) -> str:
    """The current body of the generated ``outbox.events_emit()``."""
    row = conn.execute(
        "select prosrc from pg_proc where oid = 'outbox.events_emit()'::regprocedure"
    ).fetchone()
    assert row is not None
    return str(row[0])


def orphans(conn: Any) -> tuple[int, int, int]:
    """Deliveries without their event, without their webhook, attempts
    without their delivery (the ``orphans`` query): what foreign keys would
    forbid, and what the set-based cascades and batched locks that stand in
    for them must keep at (0, 0, 0)."""
    row = conn.execute(query("orphans")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def delivered_outcomes(delivery_ids: list[int]) -> str:
    """``complete_deliveries``' outcomes parameter: a 200 for each id."""
    return json.dumps(
        [
            {"id": i, "attempt": 1, "status": "delivered", "retry_in": 0,
             "attempted_at": "2026-12-01T00:00:00Z", "duration_ms": 1.0, "status_code": 200,
             "error_class": None, "error": None, "response_body": "ok"}
            for i in delivery_ids
        ]
    )  # fmt: skip


def complete_delivered(conn: Any, delivery_ids: list[int], worker_id: str = "w") -> int:
    """Run ``complete_deliveries`` with a 200 outcome for each id; the count it moved."""
    params = {
        "outcomes": delivered_outcomes(delivery_ids),
        "body_event_ids": [],
        "bodies": [],
        "worker_id": worker_id,
    }
    row = conn.execute(query("complete_deliveries"), params).fetchone()
    assert row is not None
    return int(row[0])
