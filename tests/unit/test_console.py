"""The web console's pure parts: forms, owners, CSRF tokens, charts, templates' escaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbox_worker import errors
from outbox_worker.console import charts
from outbox_worker.console.data import Bucket
from outbox_worker.console.hooks import HookForm, parse_moment
from outbox_worker.console.session import Forbidden, OwnerNotFound, Viewer, check_csrf, csrf_token
from outbox_worker.console.web import templates


def test_the_webhook_form_reads_events_patterns_rate_and_headers() -> None:
    form = HookForm.parse(
        {
            "url": [" https://example.com/h "],
            "events": ["order.created", "webhook.test"],
            "patterns": ["customer.*, order.created  *"],
            "rate_limit": ["2.5"],
            "headers": ["Authorization: Bearer a:b\n\nX-Team: ops "],
            "enabled": ["on"],
        }
    )
    assert form.url == "https://example.com/h"
    assert form.events == ["order.created", "webhook.test", "customer.*", "*"]
    assert form.rate() == 2.5 and form.enabled
    assert form.header_map() == {"Authorization": "Bearer a:b", "X-Team": "ops"}
    assert HookForm.parse({}).header_map() is None and HookForm.parse({}).rate() is None
    assert HookForm.parse({"clear_headers": ["on"], "headers": ["A: b"]}).header_map() == {}


def test_bad_form_values_get_one_line_that_says_what_to_do() -> None:
    with pytest.raises(errors.InvalidRateLimit, match="requests per second"):
        HookForm.parse({"rate_limit": ["fast"]}).rate()
    with pytest.raises(errors.InvalidHeaders, match="Name: value"):
        HookForm.parse({"headers": ["no colon here"]}).header_map()
    with pytest.raises(errors.ValidationError, match="ISO 8601"):
        parse_moment("yesterday")


def test_times_from_forms_are_utc_unless_they_say_otherwise() -> None:
    assert parse_moment("2026-12-01T10:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-12-01T10:00:00Z") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_moment("2026-12-01T10:00+01:00") == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert parse_moment("  ") is None


def test_a_vendor_acts_for_its_owner_only_an_operator_for_any() -> None:
    vendor = Viewer("a", False, "t", "a")
    assert vendor.for_owner(None) == vendor and vendor.for_owner("a").acting == "a"
    with pytest.raises(OwnerNotFound):
        vendor.for_owner("b")
    operator = Viewer("ops", True, "t", None)
    assert operator.for_owner("b").acting == "b"


def test_csrf_tokens_belong_to_one_session() -> None:
    mine, theirs = csrf_token("session-1"), csrf_token("session-2")
    assert mine != theirs and len(mine) == 64
    viewer = Viewer("a", False, mine, "a")
    check_csrf(viewer, mine)
    for sent in (theirs, "", None, mine[:-1]):
        with pytest.raises(Forbidden):
            check_csrf(viewer, sent)


def test_charts_are_svg_of_numbers_with_an_escaped_label() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    buckets = [
        Bucket(start, 4, 3, 10.0, 40.0),
        Bucket(start + timedelta(minutes=5), 0, 0, None, None),
        Bucket(start + timedelta(minutes=10), 2, 0, 5.0, 9.0),
    ]
    bars = str(charts.success_bars(buckets, '<script>"x"'))
    assert bars.count('class="ok"') == 1 and bars.count('class="fail"') == 2 and 'class="empty"' in bars
    assert "<script>" not in bars and "&lt;script&gt;" in bars
    lines = str(charts.latency_lines(buckets, "p"))
    assert lines.count("<polyline") == 2 and "40 ms" in lines


def test_templates_escape_whatever_their_name() -> None:
    assert templates.autoescape is True
    rendered = templates.from_string("{{ x }}").render(x='<img src=x onerror="y">')
    assert rendered == "&lt;img src=x onerror=&#34;y&#34;&gt;"
