"""Emit events from the application, inside the application's transaction.

``emit`` runs ``outbox.emit(...)`` on the connection you pass, so the event
commits or rolls back with your business data: rolled back = never sent,
committed = delivered at least once to every matching enabled webhook.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from outbox_worker import db
from outbox_worker.errors import InvalidPayload


def _encode(data: Mapping[str, Any]) -> str:
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"invalid payload: data must be a JSON object, got {type(data).__name__}")
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"invalid payload: not JSON-serialisable ({exc})") from exc


def emit(conn: db.SyncConnection, owner_id: str, event_type: str, data: Mapping[str, Any]) -> int:
    """Queue an event in ``conn``'s current transaction and return its id.

    ``conn`` is a psycopg 3 ``Connection`` or a SQLAlchemy ``Connection`` or
    ``Session``. Nothing is committed here: the caller's commit publishes it.
    """
    rows = db.fetch(conn, "emit", {"owner_id": owner_id, "event_type": event_type, "data": _encode(data)})
    return int(rows[0]["id"])


async def emit_async(
    conn: db.AsyncConnection, owner_id: str, event_type: str, data: Mapping[str, Any]
) -> int:
    """:func:`emit` for psycopg ``AsyncConnection`` and SQLAlchemy async connections and sessions."""
    rows = await db.fetch_async(
        conn, "emit", {"owner_id": owner_id, "event_type": event_type, "data": _encode(data)}
    )
    return int(rows[0]["id"])
