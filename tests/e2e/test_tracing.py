"""One trace from the emitting code to the receiver: a real worker process
exports its spans over OTLP/HTTP to a collector stand-in on loopback, which
decodes them with opentelemetry-proto; a real receiver records the
``traceparent`` headers it gets."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from yarl import URL

from outbox_worker import emit, webhooks
from outbox_worker.traceparent import event_trace_id, parse
from tests.collector import CLIENT, CONSUMER, Collected, Collector
from tests.receiver import Receiver
from tests.workers import kill, settled, spawn_worker, until_settled

APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"  # the app's request span, which emitted the event


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = await Collector().start()
    yield c
    await c.stop()


def otel_env(collector: Collector, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.traces_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "outbox-worker-under-test",
        **extra,
    }


async def run_until_settled(
    database_url: str, worker_id: str, env: dict[str, str], expected: int
) -> list[dict[str, Any]]:
    """A worker process until ``expected`` deliveries settle, then SIGTERM
    (its shutdown exports what is buffered); its JSON log lines."""
    worker = spawn_worker(database_url, worker_id, env)
    try:
        await until_settled(database_url, expected, timeout=30)
    finally:
        kill(worker, signal.SIGTERM)
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def by_delivery(spans: list[Collected]) -> dict[int, list[Collected]]:
    grouped: dict[int, list[Collected]] = defaultdict(list)
    for span in spans:
        grouped[int(str(span.attributes["outbox.delivery_id"]))].append(span)
    return {k: sorted(v, key=lambda s: int(str(s.attributes["outbox.attempt"]))) for k, v in grouped.items()}


async def test_attempts_join_the_emitters_trace_and_the_receiver_continues_it(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, collector: Collector
) -> None:
    receiver.script("/a", 500)  # one retry of the traced delivery
    receiver.script("/b", 500)  # and one of a delivery without a context
    webhooks.create_webhook(conn, "traced", receiver.url("/a?token=secret"), ["order.created"])
    webhooks.create_webhook(conn, "untraced", receiver.url("/b"), ["order.created"])
    traced = emit(conn, "traced", "order.created", {"n": 1}, traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
    untraced = [emit(conn, "untraced", "order.created", {"n": n}) for n in (2, 3)]

    logs = await run_until_settled(database_url, "traced", otel_env(collector), expected=3)

    attempts = [s for s in collector.spans if s.kind == CLIENT]
    assert len(attempts) == 5, attempts  # 2 + (2 + 1)
    assert {s.service for s in collector.spans} == {"outbox-worker-under-test"}
    deliveries = by_delivery(attempts)

    # The traced event: both attempts are children of the app's span, in its trace.
    first, second = next(v for v in deliveries.values() if v[0].attributes["outbox.event_id"] == traced)
    for span in (first, second):
        assert (span.trace_id, span.parent_span_id, span.name) == (APP_TRACE, APP_SPAN, "POST")
        assert span.end_ns > span.start_ns
    origin = str(URL(receiver.base_url).origin())
    assert first.attributes == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": URL(receiver.base_url).port,
        "url.scheme": "http",
        "url.full": origin,  # never the path or its ?token=
        "outbox.attempt": 1,
        "outbox.delivery_id": first.attributes["outbox.delivery_id"],
        "outbox.event_id": traced,
        "outbox.webhook_id": first.attributes["outbox.webhook_id"],
        "outbox.outcome": "pending",
        "http.response.status_code": 500,
        "error.type": "500",
    }
    assert first.status_code == 2  # STATUS_CODE_ERROR
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["outbox.attempt"] == 2
    assert second.attributes["http.request.resend_count"] == 1
    assert "error.type" not in second.attributes

    # The receiver got the trace, and the attempt span's own id as its parent.
    sent = [parse(r.headers["traceparent"]) for r in receiver.on("/a")]
    assert [(f"{t.trace_id:032x}", f"{t.span_id:016x}", t.flags) for t in sent if t] == [
        (APP_TRACE, first.span_id, 1),
        (APP_TRACE, second.span_id, 1),
    ]

    # The dispatch is a span of its own, linked to the app's span.
    dispatches = [s for s in collector.named("outbox dispatch") if s.kind == CONSUMER]
    app_link = (APP_TRACE, APP_SPAN)
    linked = [d for d in dispatches if any((k.trace_id, k.span_id) == app_link for k in d.links)]
    assert len(linked) == 1 and linked[0].trace_id != APP_TRACE  # a link, not a parent
    # So is the claim that took the retry.
    claims = [s for s in collector.named("outbox claim") if s.kind == CONSUMER]
    assert any(any((k.trace_id, k.span_id) == app_link for k in c.links) for c in claims)

    # Without a context: each event its own fresh trace, the one its id
    # derives; a delivery's retries stay in it; the receiver continues it.
    created = dict(conn.execute("select id, created_at from outbox.events").fetchall())
    own = {
        v[0].attributes["outbox.event_id"]: {s.trace_id for s in v}
        for v in deliveries.values()
        if v[0].attributes["outbox.event_id"] in untraced
    }
    assert own == {e: {f"{event_trace_id(e, created[e]):032x}"} for e in untraced}
    assert len({t for traces in own.values() for t in traces} | {APP_TRACE}) == 3
    assert sorted(len(v) for v in deliveries.values()) == [1, 2, 2]
    for request in receiver.on("/b"):
        header = parse(request.headers["traceparent"])
        assert header is not None
        span = next(s for s in attempts if s.span_id == f"{header.span_id:016x}")
        assert span.trace_id == f"{header.trace_id:032x}" and span.parent_span_id == ""

    # The attempt's log line carries its trace id (a retry logs at info).
    retried = [line for line in logs if line.get("event") == "attempt" and line.get("outcome") == "pending"]
    assert {line["trace_id"] for line in retried} <= {APP_TRACE} | {t for ts in own.values() for t in ts}
    assert any(line["trace_id"] == APP_TRACE for line in retried)


async def test_a_ratio_sampler_keeps_or_drops_each_trace_whole(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, collector: Collector
) -> None:
    """An unsampled emitter's trace stays unsampled (parent-based): no
    attempt span is exported, and the receiver is told so, yet still gets the
    trace to join its logs by."""
    webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    emit(conn, "v", "order.created", {}, traceparent=f"00-{APP_TRACE}-{APP_SPAN}-00")
    env = otel_env(collector, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="1.0")
    await run_until_settled(database_url, "sampled", env, expected=1)
    assert [s for s in collector.spans if s.kind == CLIENT] == []
    header = parse(receiver.on("/h")[0].headers["traceparent"])
    assert header is not None and f"{header.trace_id:032x}" == APP_TRACE and not header.sampled


async def test_without_otel_variables_no_header_is_sent(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    emit(conn, "v", "order.created", {}, traceparent=f"00-{APP_TRACE}-{APP_SPAN}-01")
    worker = spawn_worker(database_url, "untraced")  # OTEL_* only as the test run's own environment has them
    try:
        await until_settled(database_url, 1)
    finally:
        kill(worker, signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    assert settled(database_url, 1)
    assert "traceparent" not in receiver.on("/h")[0].headers  # off means off, even for a stored context


async def test_otel_variables_the_worker_cannot_honour_stop_it_with_one_line(database_url: str) -> None:
    worker = spawn_worker(database_url, "bad-otel", {"OTEL_TRACES_EXPORTER": "zipkin"})
    _, stderr = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode != 0
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: OTEL_TRACES_EXPORTER=zipkin: not an exporter the worker has"), lines
    assert "Traceback" not in stderr.decode()
