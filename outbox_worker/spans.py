"""The worker's OpenTelemetry spans; imported only when tracing is on
(:mod:`~outbox_worker.tracing` decides, docs/tracing.md has the picture).

Each attempt is a CLIENT span in the trace of the code that emitted the
event (its stored ``traceparent``), after the HTTP client semantic
conventions, and the receiver gets a ``traceparent`` naming that span, so
its own spans are the attempt's children. An event emitted without a
context gets a trace of its own whose id is derived from the event
(:func:`~outbox_worker.traceparent.event_trace_id`): every attempt of each
of its deliveries, retries on any worker included, lands in that one
trace, with nothing stored. A dispatch or a claim is a span of its own,
linked to its events' traces: one batch serves many traces, so it is none's
child.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import version
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from yarl import URL

from outbox_worker.db import Row
from outbox_worker.jobs import Job, Outcome
from outbox_worker.traceparent import TraceParent, event_trace_id, format_traceparent, parse

Attempt = Callable[[Job], Awaitable[Outcome]]
SendAttempt = Callable[[Job, str | None], Awaitable[Outcome]]

_ROOT = Context()  # no current span: a parent is always given explicitly


class EventTraceIds(RandomIdGenerator):
    """The SDK's random ids, except for the root span of an event emitted
    without a context: that one takes the id derived from the event, set
    just before the span starts in the same synchronous step. Through the
    id generator, not a made-up parent, so the sampler decides on it as on
    any root (a 1% ratio keeps 1% of such traces, whole)."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_trace_id(self) -> int:
        trace_id, self.next_trace_id = self.next_trace_id, 0
        return trace_id or super().generate_trace_id()


def traces_of(rows: Iterable[Row]) -> dict[int, TraceParent]:
    """Each event's trace from rows of ``dispatch`` or ``claim_deliveries``
    run with ``traced``: its stored context, else a trace of its own."""
    traces: dict[int, TraceParent] = {}
    for row in rows:
        event_id = row["event_id"]
        if event_id not in traces:
            traces[event_id] = parse(row["traceparent"]) or TraceParent(
                event_trace_id(event_id, row["created_at"]), 0
            )
    return traces


def target(raw: str) -> dict[str, Any]:
    """An attempt span's attributes for a webhook URL: scheme, host and port.
    Never the path or query, which can hold a receiver's token (the attempt
    log keeps the origin only too); userinfo is refused before any send."""
    try:
        url = URL(raw)
        return {
            "http.request.method": "POST",
            "server.address": url.host or "",
            "server.port": url.port or 0,
            "url.scheme": url.scheme,
            "url.full": str(url.origin()),
        }
    except ValueError:
        return {"http.request.method": "POST", "url.full": "<invalid>"}


def _span_context(t: TraceParent) -> trace.SpanContext:
    return trace.SpanContext(t.trace_id, t.span_id, is_remote=True, trace_flags=trace.TraceFlags(t.flags))


class Tracing:
    """The worker's tracer: batch spans, attempt spans and their header."""

    def __init__(self, provider: TracerProvider, ids: EventTraceIds) -> None:
        self.provider = provider
        self._ids = ids
        self._tracer = provider.get_tracer("outbox_worker", version("outbox-worker"))
        self._targets: dict[str, dict[str, Any]] = {}

    def _parent(self, t: TraceParent | None) -> Context:
        """The context an attempt starts in: its event's span, or none (a
        root, whose trace id is then the event's own: see EventTraceIds)."""
        if t is None:
            return _ROOT
        if not t.span_id:
            self._ids.next_trace_id = t.trace_id
            return _ROOT
        return trace.set_span_in_context(trace.NonRecordingSpan(_span_context(t)), _ROOT)

    def adopt(self, jobs: Iterable[Job], rows: list[Row], name: str, started_ns: int) -> None:
        """Give a batch's jobs their traces, and record the batch's span
        (``name``, begun at ``started_ns``) linked to its events' contexts:
        once per emitting span, so a request that emitted many events is
        linked once (the SDK keeps 128 links, OTEL_SPAN_LINK_COUNT_LIMIT)."""
        traces = traces_of(rows)
        for job in jobs:
            job.trace = traces.get(job.event_id)
        span = self._tracer.start_span(
            name,
            context=_ROOT,
            kind=trace.SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "messaging.system": "outbox_worker",
                "messaging.operation.type": "receive",
                "messaging.destination.name": "outbox.events",
                "messaging.batch.message_count": len(traces),
                "outbox.deliveries": sum(1 for r in rows if r["id"] is not None),
            },
        )
        # Added once sampled, not passed at the start: the samplers the SDK
        # reads from OTEL_TRACES_SAMPLER do not look at links, and building
        # them was most of an unsampled batch span's cost (~5 of 7 us per event).
        if span.is_recording():
            for t in set(traces.values()):
                if t.span_id:
                    span.add_link(_span_context(t))
        span.end()

    def traced(self, send: SendAttempt) -> Attempt:
        """``send`` (an :class:`~outbox_worker.attempt.Attempter`'s attempt)
        in a CLIENT span whose ``traceparent`` goes to the receiver."""
        tracer, targets, parent = self._tracer, self._targets, self._parent
        client, error = trace.SpanKind.CLIENT, trace.StatusCode.ERROR

        async def attempt(job: Job) -> Outcome:
            attributes = targets.get(job.url)
            if attributes is None:
                if len(targets) >= 4096:
                    targets.clear()
                attributes = targets[job.url] = target(job.url)
            span = tracer.start_span("POST", context=parent(job.trace), kind=client, attributes=attributes)
            context = span.get_span_context()
            header = format_traceparent(context.trace_id, context.span_id, context.trace_flags)
            try:
                outcome = await send(job, header)
            except BaseException as exc:  # shutdown's cancellation, or a bug: the span still ends
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(error)
                span.end()
                raise
            if span.is_recording():
                span.set_attributes(
                    {
                        "outbox.attempt": job.attempt,
                        "outbox.delivery_id": job.id,
                        "outbox.event_id": job.event_id,
                        "outbox.webhook_id": str(job.webhook_id),
                        "outbox.outcome": outcome.status,
                    }
                )
                if job.attempt > 1:
                    span.set_attribute("http.request.resend_count", job.attempt - 1)
                if outcome.status_code is not None:
                    span.set_attribute("http.response.status_code", outcome.status_code)
                if outcome.status != "delivered":
                    code = outcome.status_code
                    kind = str(code) if code and code >= 400 else outcome.error_class or "_OTHER"
                    span.set_attribute("error.type", kind)
                    span.set_status(error, outcome.error)
            span.end()
            outcome.trace_id = f"{context.trace_id:032x}"
            return outcome

        return attempt

    def shutdown(self) -> None:
        """Export what is buffered and stop (it blocks: run it off the loop)."""
        self.provider.shutdown()
