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


def _params(
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    ordering_key: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"invalid payload: data must be a JSON object, got {type(data).__name__}")
    try:
        encoded = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"invalid payload: not JSON-serialisable ({exc})") from exc
    return {
        "owner_id": owner_id,
        "event_type": event_type,
        "data": encoded,
        "ordering_key": ordering_key,
        "idempotency_key": idempotency_key,
    }


def emit(
    conn: db.SyncConnection,
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    ordering_key: str | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Queue an event in ``conn``'s current transaction and return its id.

    ``conn`` is a psycopg 3 ``Connection`` or a SQLAlchemy ``Connection`` or
    ``Session``. Nothing is committed here: the caller's commit publishes it.

    ``ordering_key``: events of the owner with the same key reach each
    webhook one at a time, in order. ``idempotency_key``: within
    ``outbox.config.idempotency_window`` (24 h) another emit with the same
    owner and key creates nothing and returns the first event's id; while
    the first is uncommitted, the second waits for it.
    """
    params = _params(owner_id, event_type, data, ordering_key, idempotency_key)
    return int(db.fetch(conn, "emit", params)[0]["id"])


async def emit_async(
    conn: db.AsyncConnection,
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    ordering_key: str | None = None,
    idempotency_key: str | None = None,
) -> int:
    """:func:`emit` for psycopg ``AsyncConnection`` and SQLAlchemy async connections and sessions."""
    params = _params(owner_id, event_type, data, ordering_key, idempotency_key)
    return int((await db.fetch_async(conn, "emit", params))[0]["id"])
