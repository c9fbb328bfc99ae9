"""When to try again: the retry schedule, jitter and ``Retry-After``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def next_delay(
    schedule: Sequence[float], attempt: int, *, jitter: float = 0.0, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next one.

    ``Retry-After`` can only lengthen the wait, up to the schedule's longest
    delay: a receiver asking for time gets it, but cannot park a delivery
    beyond the schedule.
    """
    base = schedule[min(attempt, len(schedule)) - 1]
    delay = base * random.uniform(1 - jitter, 1 + jitter) if jitter else base
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule)))
    return max(0.0, delay)
