"""Durations as people write them, for OUTBOX_RETENTION and the CLI's ages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from outbox_worker.durations import DurationError, parse_duration, parse_retention
from outbox_worker.retention import pass_interval
from outbox_worker.settings import Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("90min", timedelta(minutes=90)),
        ("30s", timedelta(seconds=30)),
        ("1.5h", timedelta(minutes=90)),
        (" 30 D ", timedelta(days=30)),
        ("0s", timedelta(0)),
    ],
)
def test_durations_in_days_hours_minutes_seconds(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "soon", "7 days", "-1d", "1w", "1e3s", "7d12h"])
def test_anything_else_is_refused_with_what_to_write(text: str) -> None:
    with pytest.raises(DurationError, match=r"use a number and one of d, h, min, s \(e\.g\. 30d"):
        parse_duration(text)


def test_m_is_refused_as_minutes_or_months() -> None:
    with pytest.raises(DurationError, match="'m' could be minutes or months"):
        parse_duration("5m")


@pytest.mark.parametrize(("text", "expected"), [("off", None), ("OFF", None), ("", None), ("  ", None),
                                                ("30d", timedelta(days=30))])  # fmt: skip
def test_a_retention_is_a_duration_or_off(text: str, expected: timedelta | None) -> None:
    assert parse_retention(text) == expected


def test_a_retention_of_nothing_is_refused() -> None:
    # "0s" would delete every finished delivery the moment it finished.
    with pytest.raises(DurationError, match="longer than 0 \\(or 'off'"):
        parse_retention("0s")


def test_the_setting_defaults_to_30_days_and_is_checked_at_start() -> None:
    assert Settings().retention_window == timedelta(days=30)
    assert Settings(retention=" 12H ").retention == "12h"
    assert Settings(retention="").retention_window is None
    with pytest.raises(ValidationError, match="'m' could be minutes or months"):
        Settings(retention="1m")


@pytest.mark.parametrize(
    ("window", "seconds"),
    [(None, 60.0), (timedelta(days=30), 60.0), (timedelta(minutes=5), 30.0), (timedelta(seconds=3), 1.0)],
)
def test_passes_run_every_tenth_of_the_window_within_1_to_60_s(
    window: timedelta | None, seconds: float
) -> None:
    assert pass_interval(window) == seconds
