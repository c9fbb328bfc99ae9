"""Durations as people write them: ``30d``, ``12h``, ``90min``, ``45s``.

One parser for the CLI's ages (``purge --older-than``, ``--since``) and the
``OUTBOX_RETENTION`` setting, so both accept and refuse the same text.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}
OFF = ("off", "")


class DurationError(ValueError):
    """Text that is not a duration; the message says what to write instead."""


def parse_duration(text: str) -> timedelta:
    """A duration in days, hours, minutes or seconds (``30d``, ``12h``,
    ``90min``, ``45s``). ``m`` is refused: it reads as minutes to some and as
    months to others, and a retention of one minute deletes all history."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None or found.group(2) not in UNITS:
        unit = found.group(2) if found else None
        why = " ('m' could be minutes or months: write min, or 30d for a month)" if unit == "m" else ""
        raise DurationError(f"{text!r}: use a number and one of d, h, min, s (e.g. 30d, 12h, 90min){why}")
    return timedelta(seconds=float(found.group(1)) * UNITS[found.group(2)])


def parse_retention(text: str) -> timedelta | None:
    """A retention window: a positive duration, or ``off`` (or empty) for
    none at all (keep everything)."""
    if text.strip().lower() in OFF:
        return None
    window = parse_duration(text)
    if window <= timedelta(0):
        raise DurationError(f"{text!r}: a retention must be longer than 0 (or 'off' to keep everything)")
    return window
