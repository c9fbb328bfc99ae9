"""The retry schedule and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from outbox_worker.retry import next_delay, parse_retry_after

SCHEDULE = [5.0, 300.0, 1800.0]


def test_schedule_without_jitter() -> None:
    assert [next_delay(SCHEDULE, n) for n in (1, 2, 3)] == SCHEDULE


def test_jitter_stays_within_its_fraction() -> None:
    delays = [next_delay(SCHEDULE, 2, jitter=0.2) for _ in range(500)]
    assert min(delays) >= 240 and max(delays) <= 360
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(60.0, 60.0), (1.0, 5.0), (999999.0, 1800.0), (None, 5.0)]
)
def test_retry_after_lengthens_up_to_the_longest_delay(retry_after: float | None, expected: float) -> None:
    assert next_delay(SCHEDULE, 1, retry_after=retry_after) == expected


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
