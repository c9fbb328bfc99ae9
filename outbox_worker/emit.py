"""Emit events from the application, inside the application's transaction.

``emit`` runs ``outbox.emit(...)`` on the connection you pass, so the event
commits or rolls back with your business data: rolled back = never sent,
committed = delivered at least once to every matching enabled webhook.

With ``opentelemetry-api`` installed, the event carries the current span's
trace context (``traceparent``), and the worker's attempts join that trace
(docs/tracing.md). Without it, nothing is looked up: the import is tried
once, here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from outbox_worker import db
from outbox_worker.errors import InvalidPayload
from outbox_worker.traceparent import format_traceparent

try:
    from opentelemetry.trace import get_current_span
except ImportError:  # no OpenTelemetry in this app: no trace context to carry
    get_current_span = None  # type: ignore[assignment]


def current_traceparent() -> str | None:
    """The current OpenTelemetry span's context as a ``traceparent`` value;
    None without ``opentelemetry-api`` or outside a span."""
    if get_current_span is None:
        return None
    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format_traceparent(context.trace_id, context.span_id, context.trace_flags)


def _params(
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    ordering_key: str | None,
    idempotency_key: str | None,
    traceparent: str | None,
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
        "traceparent": traceparent if traceparent is not None else current_traceparent(),
    }


def emit(
    conn: db.SyncConnection,
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    ordering_key: str | None = None,
    idempotency_key: str | None = None,
    traceparent: str | None = None,
) -> int:
    """Queue an event in ``conn``'s current transaction and return its id.

    ``conn`` is a psycopg 3 ``Connection`` or a SQLAlchemy ``Connection`` or
    ``Session``. Nothing is committed here: the caller's commit publishes it.

    ``ordering_key``: events of the owner with the same key reach each
    webhook one at a time, in order. ``idempotency_key``: within
    ``outbox.config.idempotency_window`` (24 h) another emit with the same
    owner and key creates nothing and returns the first event's id; while
    the first is uncommitted, the second waits for it.

    ``traceparent``: the W3C trace context the deliveries join; by default
    the current OpenTelemetry span's, when ``opentelemetry-api`` is
    installed. A malformed value is dropped (stored NULL), never refused.
    """
    params = _params(owner_id, event_type, data, ordering_key, idempotency_key, traceparent)
    return int(db.fetch(conn, "emit", params)[0]["id"])


async def emit_async(
    conn: db.AsyncConnection,
    owner_id: str,
    event_type: str,
    data: Mapping[str, Any],
    *,
    ordering_key: str | None = None,
    idempotency_key: str | None = None,
    traceparent: str | None = None,
) -> int:
    """:func:`emit` for psycopg ``AsyncConnection`` and SQLAlchemy async connections and sessions."""
    params = _params(owner_id, event_type, data, ordering_key, idempotency_key, traceparent)
    return int((await db.fetch_async(conn, "emit", params))[0]["id"])
