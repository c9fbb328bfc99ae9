"""W3C trace context (``traceparent``) as the outbox stores and sends it.

No OpenTelemetry here: the emit helpers, the worker's tracing and the tests
share these few functions, and the first must work without the SDK.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The emit trigger's rule (sql/schema.sql), loosely W3C's: two hex digits of
# version (not ff), 32 of trace id, 16 of parent id, 2 of flags; either
# case; whatever a later version appends after a dash is ignored.
_FORMAT = re.compile(r"([0-9a-fA-F]{2})-([0-9a-fA-F]{32})-([0-9a-fA-F]{16})-([0-9a-fA-F]{2})(?:-|$)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A trace and the span to continue it from. ``span_id`` 0: no span to
    continue, only the trace (an event emitted without a context)."""

    trace_id: int
    span_id: int
    flags: int = 0

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse(value: str | None) -> TraceParent | None:
    """The trace context in a ``traceparent`` value, or None when there is
    none or it is malformed (W3C: then start a new trace, never fail)."""
    if not value:
        return None
    match = _FORMAT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if version.lower() == "ff" or not trace_id or not span_id:
        return None
    return TraceParent(trace_id, span_id, int(flags_hex, 16))


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The version-00 header value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def event_trace_id(event_id: int, created_at: datetime) -> int:
    """The trace id of an event emitted without a trace context: the same for
    each of its deliveries and retries, on every worker, with nothing stored.
    The creation time (to the microsecond) keeps two databases' event 1
    apart; hashed, the id is as uniform as a random one, which ratio
    sampling relies on."""
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    digest = hashlib.blake2b(f"{event_id}/{micros}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big") or 1
