"""Operations: the metrics and health endpoints of a running worker, and what its logs carry."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sys
import time
from typing import Any

import aiohttp
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from outbox_worker import emit, logs, webhooks
from outbox_worker.databases import default_name
from tests.conftest import with_database
from tests.helpers import eventually, wait_for
from tests.receiver import Receiver
from tests.workers import running_worker, settled, spawn_worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Scraped:
    out: Scraped = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: Scraped, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_health_of_a_running_worker(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    ok = webhooks.create_webhook(conn, "shop", receiver.url("/ok"), ["order.*"])
    webhooks.create_webhook(conn, "shop", receiver.script("/flaky", 500, 503), ["order.created"])
    assert ok.secret
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ops = {"metrics_port": port, "metrics_host": "127.0.0.1", "metrics_interval": 0.1}
    async with running_worker(database_url, **ops):
        assert (await get(base + "/healthz"))[0] == 200
        await eventually(
            lambda: _status(base + "/readyz"), timeout=10, what="readyz 200 (database and LISTEN up)"
        )
        _, body = await get(base + "/readyz")
        assert json.loads(body) == {"status": "ready", "worker": True, "database": True, "listen": True}
        before = samples((await get(base + "/metrics"))[1])

        with psycopg.connect(database_url) as app:
            emit(app, "shop", "order.created", {"id": "o1"})
            emit(app, "shop", "order.status_changed", {"id": "o1", "status": "PAID"})

        async def done() -> bool:
            return await asyncio.to_thread(settled, database_url, 3)

        await eventually(done, timeout=20, what="3 settled deliveries")
        settled_at = time.time()

        async def scraped_after_refresh() -> Scraped:
            s = samples((await get(base + "/metrics"))[1])
            refreshed = value(s, "outbox_queue_stats_timestamp_seconds", database=default_name(database_url))
            return s if refreshed > settled_at else {}

        after = await eventually(scraped_after_refresh, timeout=10, what="queue gauges refreshed")

    here = default_name(database_url)  # the database label of a single database: its name

    def delta(name: str, **labels: str) -> float:
        return value(after, name, database=here, **labels) - value(before, name, database=here, **labels)

    assert delta("outbox_deliveries_total", outcome="delivered") == 3
    assert delta("outbox_deliveries_total", outcome="failed") == 0
    assert delta("outbox_attempts_total", outcome="retrying") == 2
    assert delta("outbox_attempts_total", outcome="delivered") == 3
    assert delta("outbox_attempt_results_total", status_class="2xx") == 3
    assert delta("outbox_attempt_results_total", status_class="5xx") == 2
    assert delta("outbox_attempt_duration_seconds_count") == 5
    assert delta("outbox_dispatched_events_total") >= 2
    assert delta("outbox_dispatch_lag_seconds_count") >= 2
    assert value(after, "outbox_in_flight_requests") == 0
    assert value(after, "outbox_queue_deliveries", database=here, state="pending") == 0
    assert value(after, "outbox_queue_deliveries", database=here, state="failed") == 0
    assert value(after, "outbox_worker_ready") == 1
    assert value(after, "outbox_listen_connected", database=here) == 1
    assert value(after, "outbox_queue_stats_timestamp_seconds", database=here) > 0


async def _status(url: str) -> bool:
    try:
        return (await get(url))[0] == 200
    except aiohttp.ClientError:
        return False


async def test_readyz_fails_when_the_database_is_unreachable(server_url: str) -> None:
    # A database that does not exist: the process is alive, but not ready.
    url = with_database(server_url, "outbox_no_such_database")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with running_worker(url, metrics_port=port, metrics_host="127.0.0.1"):
        assert (await get(base + "/healthz"))[0] == 200
        status, body = await get(base + "/readyz")
        assert status == 503
        assert json.loads(body)["database"] is False


def test_a_worker_process_serves_probes_and_metrics(database_url: str) -> None:
    import urllib.request

    port = free_port()
    process = spawn_worker(database_url, "ops-probe", metrics_port=port, metrics_host="127.0.0.1")
    try:

        def answers(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                    return int(resp.status)
            except OSError:
                return 0

        wait_for(lambda: answers("/readyz") == 200, timeout=20, what="the process to become ready")
        assert answers("/healthz") == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        assert "outbox_in_flight_requests" in text
        assert "outbox_attempt_duration_seconds_bucket" in text
        assert "process_resident_memory_bytes" in text or sys.platform != "linux"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


async def test_delivery_logs_carry_ids_and_never_secrets_or_bodies(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = webhooks.create_webhook(conn, "shop", receiver.script("/hook", 500), ["order.created"])
    marker = "body-marker-7f3a9c"
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    logs.configure("debug", "json")
    try:
        with psycopg.connect(database_url) as app:
            event_id = emit(app, "shop", "order.created", {"id": marker, "note": marker})
        async with running_worker(database_url, log_level="debug"):

            async def done() -> bool:
                return await asyncio.to_thread(settled, database_url, 1)

            await eventually(done, timeout=20, what="the delivery to settle")
    finally:
        monkeypatch.undo()
        logs.configure("info", "json")
    output = captured.getvalue()
    assert hook.secret not in output
    assert hook.secret.removeprefix("whsec_") not in output
    assert marker not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    attempts = [line for line in lines if line["event"] == "attempt"]
    assert [(a["attempt"], a["outcome"], a["status_code"], a["level"]) for a in attempts] == [
        (1, "pending", 500, "info"),
        (2, "delivered", 200, "debug"),
    ]
    delivery_id = conn.execute("select id from outbox.deliveries").fetchone()[0]  # type: ignore[index]
    for a in attempts:
        assert a["event_id"] == event_id
        assert a["delivery_id"] == delivery_id
        assert a["webhook_id"] == str(hook.id)
        assert a["duration_ms"] >= 0


def test_attempt_metrics_count_like_prometheus_client_would() -> None:
    """The per-attempt metrics are plain counts behind a collector; the
    exposition is the one a Counter and a Histogram would give: "le" bounds
    inclusive, cumulative buckets, +Inf, count and sum."""
    import uuid
    from datetime import UTC, datetime

    from prometheus_client import REGISTRY

    from outbox_worker import metrics
    from outbox_worker.jobs import Job, Outcome

    def sample(name: str, **labels: str) -> float:
        # Counted without naming a database: under metrics.DEFAULT_DATABASE.
        return REGISTRY.get_sample_value(name, {"database": metrics.DEFAULT_DATABASE, **labels}) or 0.0

    names = [
        ("outbox_attempt_duration_seconds_bucket", {"le": "0.005"}),
        ("outbox_attempt_duration_seconds_bucket", {"le": "0.01"}),
        ("outbox_attempt_duration_seconds_bucket", {"le": "30.0"}),
        ("outbox_attempt_duration_seconds_bucket", {"le": "+Inf"}),
        ("outbox_attempt_duration_seconds_count", {}),
        ("outbox_attempt_duration_seconds_sum", {}),
        ("outbox_attempts_total", {"outcome": "delivered"}),
        ("outbox_attempts_total", {"outcome": "retrying"}),
        ("outbox_attempts_total", {"outcome": "failed"}),
        ("outbox_deliveries_total", {"outcome": "failed"}),
        ("outbox_attempt_results_total", {"status_class": "2xx"}),
        ("outbox_attempt_results_total", {"status_class": "timeout"}),
    ]
    before = [sample(n, **labels) for n, labels in names]
    job = Job(1, 2, uuid.uuid4(), 1, "https://example.com/h", ("s",), b"{}")
    now = datetime.now(UTC)
    for status, code, ms in (("delivered", 200, 5.0), ("delivered", 204, 7.5), ("pending", None, 40_000.0),
                             ("failed", None, 1.0)):  # fmt: skip
        metrics.record_outcome(
            Outcome(job, status, 0.0, now, ms, status_code=code, error_class=None if code else "timeout")  # type: ignore[arg-type]
        )
    after = [sample(n, **labels) for n, labels in names]
    deltas = [round(a - b, 6) for a, b in zip(after, before, strict=True)]
    assert deltas == [2, 3, 3, 4, 4, 40.0135, 2, 1, 1, 1, 2, 2]


def test_dispatch_metrics_count_like_prometheus_client_would() -> None:
    """The dispatch counter and lag histogram are plain counts behind the same
    collector: cumulative "le" buckets, a lag never below zero (a clock a
    little ahead of the database's), and a ``_created`` sample per family as
    prometheus_client's own Counter and Histogram write."""
    from datetime import UTC, datetime, timedelta

    from prometheus_client import REGISTRY

    from outbox_worker import metrics

    def sample(name: str, **labels: str) -> float:
        # Counted without naming a database: under metrics.DEFAULT_DATABASE.
        return REGISTRY.get_sample_value(name, {"database": metrics.DEFAULT_DATABASE, **labels}) or 0.0

    names = [
        ("outbox_dispatched_events_total", {}),
        ("outbox_dispatch_lag_seconds_bucket", {"le": "0.005"}),
        ("outbox_dispatch_lag_seconds_bucket", {"le": "0.25"}),
        ("outbox_dispatch_lag_seconds_bucket", {"le": "300.0"}),
        ("outbox_dispatch_lag_seconds_bucket", {"le": "+Inf"}),
        ("outbox_dispatch_lag_seconds_count", {}),
    ]
    before = [sample(n, **labels) for n, labels in names]
    lag_sum = sample("outbox_dispatch_lag_seconds_sum")
    now = datetime.now(UTC)
    metrics.observe_dispatch(
        [now + timedelta(seconds=5), now - timedelta(seconds=0.2), now - timedelta(seconds=400)]
    )
    metrics.observe_dispatch([])
    deltas = [round(sample(n, **labels) - b, 6) for (n, labels), b in zip(names, before, strict=True)]
    assert deltas == [3, 1, 2, 2, 3, 3]
    assert 400.2 <= sample("outbox_dispatch_lag_seconds_sum") - lag_sum < 401
    families = ("outbox_dispatched_events", "outbox_dispatch_lag_seconds", "outbox_attempt_duration_seconds")
    for family in families:
        assert sample(f"{family}_created") > 1.7e9


def test_a_second_worker_on_a_taken_metrics_port_warns_and_delivers(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with socket.socket() as taken:  # the first worker's metrics server, as far as the second can tell
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hook = webhooks.create_webhook(conn, "v", "http://127.0.0.1:9/refused", ["order.created"])
        emit(conn, "v", "order.created", {"id": 1})
        process = spawn_worker(database_url, "second", metrics_port=port, metrics_host="127.0.0.1")
        try:
            # It runs on: the delivery is attempted (and fails: nothing listens on port 9).
            wait_for(
                lambda: (
                    conn.execute(
                        "select count(*) from outbox.delivery_attempts a join outbox.deliveries d "
                        "on d.id = a.delivery_id where d.webhook_id = %s",
                        (hook.id,),
                    ).fetchone()
                    != (0,)
                ),
                timeout=20,
                what="the second worker delivering",
            )
            assert process.poll() is None
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    warnings = [json.loads(line) for line in err.decode().splitlines() if "port is taken" in line]
    assert warnings and warnings[0]["port"] == port and "OUTBOX_METRICS_PORT" in warnings[0]["fix"]


async def test_readyz_fails_when_the_schema_is_gone(make_database: Any) -> None:
    from outbox_worker import migrate

    url = make_database("outbox_ready_schema")
    migrate.upgrade(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with running_worker(url, metrics_port=port, metrics_host="127.0.0.1"):

        async def ready() -> bool:
            return (await get(base + "/readyz"))[0] == 200

        await eventually(ready, what="ready with its schema")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("drop schema outbox cascade")
        status, body = await get(base + "/readyz")
        assert status == 503
        answer = json.loads(body)
        assert answer["database"] is False and "run `outbox-worker migrate`" in answer["error"]


def test_the_worker_says_what_it_does_at_the_default_level(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    hook = webhooks.create_webhook(conn, "v", "http://127.0.0.1:9/refused?token=t0ps3cret", ["order.created"])
    for i in range(3):
        emit(conn, "v", "order.created", {"i": i})
    process = spawn_worker(database_url, "talker", log_level="info", summary_interval=0.2)
    try:
        wait_for(
            lambda: conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (6,),
            timeout=20,
            what="two attempts per delivery",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    lines = [json.loads(line) for line in err.decode().splitlines()]
    failures = [line for line in lines if line["event"] == "attempt"]
    assert failures and all(
        (f["webhook_id"], f["origin"], f["error_class"]) == (str(hook.id), "http://127.0.0.1:9", "connection")
        and f["level"] in ("info", "warning")
        and "status_code" in f
        for f in failures
    )
    summaries = [line for line in lines if line["event"] == "summary"]
    assert sum(s["retried"] for s in summaries) >= 3 and sum(s["events"] for s in summaries) == 3
    assert "t0ps3cret" not in err.decode()


def test_library_log_lines_stay_json(server_url: str) -> None:
    # psycopg_pool logs through the standard library when it cannot connect.
    url = with_database(server_url, "outbox_no_such_database")
    process = spawn_worker(url, "no-database", log_level="info")
    try:
        deadline = time.monotonic() + 20
        seen: list[str] = []
        assert process.stderr is not None
        while time.monotonic() < deadline and not any("psycopg.pool" in line for line in seen):
            seen.append(process.stderr.readline().decode())
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    lines = [line for line in seen + rest.decode().splitlines() if line.strip()]
    pool_lines = [json.loads(line) for line in lines if "psycopg.pool" in line]
    assert pool_lines and pool_lines[0]["logger"] == "psycopg.pool" and pool_lines[0]["level"] == "warning"
    for line in lines:
        json.loads(line)  # every line one JSON object
