"""W3C traceparent parsing and the trace ids of events without a context."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from outbox_worker import tracing
from outbox_worker.errors import TracingUnavailable
from outbox_worker.traceparent import TraceParent, event_trace_id, format_traceparent, parse

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_value_parses_into_its_fields() -> None:
    parsed = parse(VALID)
    assert parsed == TraceParent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)
    assert parsed.sampled
    assert format_traceparent(parsed.trace_id, parsed.span_id, parsed.flags) == VALID


@pytest.mark.parametrize(
    "value",
    [
        VALID.upper(),  # W3C wants lowercase; read loosely, as the emit trigger does
        VALID + "-what-a-later-version-adds",
        "01" + VALID[2:],  # a later version: its first four fields are read
    ],
)
def test_loose_reading_keeps_the_context(value: str) -> None:
    parsed = parse(value)
    assert parsed is not None and parsed.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "ff" + VALID[2:],  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        VALID[:-1],  # flags cut short
        VALID + "x",  # no dash before what follows
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
    ],
)
def test_malformed_values_are_no_context(value: str | None) -> None:
    assert parse(value) is None


def test_unsampled_flags_are_kept() -> None:
    parsed = parse(VALID[:-2] + "00")
    assert parsed is not None and not parsed.sampled and parsed.flags == 0


def test_an_events_own_trace_id_is_stable_per_event_and_differs_between_events() -> None:
    created = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)
    first = event_trace_id(1, created)
    # The same instant in another session time zone: the same id.
    assert event_trace_id(1, created.astimezone(timezone(timedelta(hours=5)))) == first
    assert event_trace_id(2, created) != first
    assert event_trace_id(1, created + timedelta(microseconds=1)) != first  # another database's event 1
    assert 0 < first < 2**128


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),  # naming a service asks for no traces
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(
    environ: dict[str, str], exporters: list[str]
) -> None:
    assert tracing.wanted(environ) == exporters
    if not exporters:
        assert tracing.from_environment(environ) is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: not an exporter the worker has"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the worker exports OTLP over HTTP only",
        ),
    ],
)
def test_what_the_worker_cannot_export_is_one_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TracingUnavailable) as caught:
        tracing.from_environment(environ)
    assert str(caught.value).startswith(message)
    assert caught.value.hint


def test_the_service_is_named_unless_the_environment_names_it() -> None:
    ours = tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert ours is not None
    try:
        assert ours.provider.resource.attributes["service.name"] == "outbox-worker"
    finally:
        ours.shutdown()


def test_an_attempt_span_names_the_origin_only() -> None:
    from outbox_worker.spans import target

    attributes = target("https://user:pw@hooks.example.com:8443/in/tok3n?key=secret")
    assert attributes == {
        "http.request.method": "POST",
        "server.address": "hooks.example.com",
        "server.port": 8443,
        "url.scheme": "https",
        "url.full": "https://hooks.example.com:8443",
    }
