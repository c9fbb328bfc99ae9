"""Whether the worker traces, and its tracer, as the standard ``OTEL_*``
variables say (docs/tracing.md).

Off unless ``OTEL_TRACES_EXPORTER`` or an OTLP endpoint is set: then the
SDK is not imported and no tracer is built, the worker's queries return no
trace context, and the hot path checks one boolean per batch. On, it needs the
``otel`` extra (the SDK and the OTLP/HTTP exporter); the spans themselves
are :mod:`~outbox_worker.spans`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from outbox_worker.errors import TracingUnavailable

if TYPE_CHECKING:
    from outbox_worker.spans import Tracing

_INSTALL = "pip install 'outbox-worker[otel]', or unset the OTEL_* variables"


def wanted(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; none: tracing off.
    ``OTEL_TRACES_EXPORTER`` names them (comma-separated); unset, an OTLP
    endpoint alone means ``otlp``; ``none`` or ``OTEL_SDK_DISABLED=true``
    turns it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if any(environ.get(e) for e in endpoints) else []
    return [n for n in names if n != "none"]


def _exporters(names: list[str], environ: Mapping[str, str]) -> list[Any]:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    exporters: list[Any] = []
    for name in names:
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise TracingUnavailable(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: the worker exports OTLP over HTTP only",
                    hint="set it to http/protobuf and point OTEL_EXPORTER_OTLP_ENDPOINT at the "
                    "collector's OTLP/HTTP port (4318)",
                )
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingUnavailable(
                    "OTEL_TRACES_EXPORTER=otlp but the OTLP/HTTP exporter is not installed", hint=_INSTALL
                ) from exc
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={name}: not an exporter the worker has",
                hint="use otlp (OTLP over HTTP), console or none",
            )
    return exporters


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The worker's tracing as the ``OTEL_*`` variables configure it, or None
    when they do not ask for it. Raises :class:`TracingUnavailable` (one
    line) when they ask for something it cannot do."""
    environ = os.environ if environ is None else environ
    names = wanted(environ)
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from outbox_worker.spans import EventTraceIds, Tracing
    except ImportError as exc:
        raise TracingUnavailable(
            f"OTEL_* variables ask for traces ({', '.join(names)}) "
            "but the OpenTelemetry SDK is not installed",
            hint=_INSTALL,
        ) from exc
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win; else our name, not
    # "unknown_service".
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "outbox-worker"}))
    ids = EventTraceIds()
    # The SDK reads the rest: the sampler from OTEL_TRACES_SAMPLER(_ARG), the
    # batching from OTEL_BSP_*, the exporter's endpoint, headers and timeout
    # from OTEL_EXPORTER_OTLP_*. The provider is the worker's own, not the
    # global one: an app that embeds the worker keeps its own set-up.
    provider = TracerProvider(resource=resource, id_generator=ids)
    for exporter in _exporters(names, environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, ids)
