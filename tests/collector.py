"""An OTLP/HTTP collector stand-in on loopback: it decodes what the
exporter sends (``ExportTraceServiceRequest``, protobuf) with
``opentelemetry-proto`` and keeps the spans."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from outbox_worker.loopback import serve_on_loopback


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str


@dataclass(frozen=True)
class Collected:
    """One span as the collector received it, ids in hex."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    links: tuple[Link, ...]
    service: str
    start_ns: int
    end_ns: int
    status_code: int


@dataclass
class Collector:
    spans: list[Collected] = field(default_factory=list)
    requests: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def traces_endpoint(self) -> str:
        return self.base_url + "/v1/traces"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest.FromString(raw)
        self.requests += 1
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Collected(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple(Link(k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                            service=str(resource.get("service.name", "")),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            status_code=span.status.code,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def named(self, name: str) -> list[Collected]:
        return [s for s in self.spans if s.name == name]

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app, shutdown_timeout=0.1)
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
CONSUMER = Span.SpanKind.SPAN_KIND_CONSUMER
