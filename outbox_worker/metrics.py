"""Prometheus metrics and health probes, served by the worker process.

The metric objects live here and are fed by two one-line hooks:
:func:`record_outcome` (from ``Completer.record``, once per attempt) and
:func:`observe_dispatch` (from the dispatcher, once per batch). Queue depth
and ages come from the database on a timer (``OUTBOX_METRICS_INTERVAL``),
never per scrape, so any number of scrapers cost one cheap query.

:class:`OpsServer` is a small aiohttp server in the worker's own loop:

- ``/metrics``: Prometheus text format;
- ``/healthz``: 200 while the process is alive (liveness);
- ``/readyz``: 200 when the worker is started, the database answers and,
  with ``OUTBOX_LISTEN``, the LISTEN connection is up (readiness).

Queue gauges describe the whole database, so every replica reports the same
values: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from outbox_worker import db

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from outbox_worker.jobs import Outcome
    from outbox_worker.settings import Settings


@dataclass(frozen=True, slots=True)
class Probes:
    """What the ops server reads from its worker, as callables: the server
    needs no more of the worker than these three answers."""

    in_flight: Callable[[], int]
    ready: Callable[[], bool]
    # Readiness of the wake-ups: LISTEN is up, or not wanted, or refused by a
    # transaction-mode pooler (then the worker polls).
    listening: Callable[[], bool]
    listen_connected: Callable[[], bool]  # the LISTEN connection is up


class _Buckets:
    """A histogram as plain counts, exposed the way prometheus_client's own
    Histogram is: "le" bounds inclusive, cumulative buckets, +Inf, count, sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # The "le" labels as prometheus_client's Histogram writes them.
        self.le = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound the value does not exceed ("le").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str, created: float) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc)
        cumulative = list(itertools.accumulate(self.counts))
        family.add_metric([], list(zip(self.le, cumulative, strict=True)), sum_value=self.sum)
        family.samples.append(Sample(f"{name}_created", {}, created))  # add_metric has no created=
        return family


class _HotPathStats:
    """The metrics updated per attempt and per dispatched event, as plain
    numbers that Prometheus reads at scrape time (a custom collector).
    Through prometheus_client's Counter and Histogram each attempt took four
    locked updates, 1.8 us, plain counts ~0.5; each dispatched event's lag
    1.9 us, plain ~0.8. The worker's event loop is their one writer; its
    metrics server, in the same loop, their reader."""

    def __init__(self) -> None:
        self.attempts = {"delivered": 0, "retrying": 0, "failed": 0}
        self.deliveries = {"delivered": 0, "failed": 0}
        self.results: dict[str, int] = {}
        self.duration = _Buckets((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0))
        self.held = 0  # deliveries the URL policy held (no attempt)
        self.dispatched = 0
        self.dispatch_lag = _Buckets(
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
        )
        self.created = time.time()

    def _counter(self, name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label])
        for value, count in list(counts.items()):
            family.add_metric([value], count, created=self.created)
        return family

    def collect(self) -> Iterator[Metric]:
        yield self._counter(
            "outbox_attempts",
            "HTTP attempts by result: delivered, retrying (another attempt follows), failed",
            "outcome",
            self.attempts,
        )
        yield self._counter(
            "outbox_deliveries",
            "Deliveries finished, by final outcome: delivered or failed",
            "outcome",
            self.deliveries,
        )
        yield self._counter(
            "outbox_attempt_results",
            "Attempts by HTTP status class (2xx..5xx) or, without a response, error class "
            "(timeout, connection, dns, invalid_target)",
            "status_class",
            self.results,
        )
        yield self.duration.family(
            "outbox_attempt_duration_seconds",
            "Duration of one HTTP attempt, response body included",
            self.created,
        )
        dispatched = CounterMetricFamily("outbox_dispatched_events", "Events fanned out into deliveries")
        dispatched.add_metric([], self.dispatched, created=self.created)
        yield dispatched
        yield self.dispatch_lag.family(
            "outbox_dispatch_lag_seconds",
            "Time from an event's insert (its transaction's commit, near enough) to its fan-out",
            self.created,
        )


_STATS = _HotPathStats()
REGISTRY.register(_STATS)  # a collector: anything with collect()
IN_FLIGHT = Gauge("outbox_in_flight_requests", "HTTP requests in flight in this process")
QUEUE = Gauge(
    "outbox_queue_deliveries",
    "Deliveries by queue state (whole database; aggregate replicas with max)",
    ["state"],
)
OLDEST_PENDING = Gauge(
    "outbox_queue_oldest_pending_age_seconds", "Age of the oldest pending delivery (whole database)"
)
UNDISPATCHED = Gauge("outbox_events_undispatched", "Events committed but not fanned out yet (whole database)")
OLDEST_UNDISPATCHED = Gauge(
    "outbox_events_oldest_undispatched_age_seconds", "Age of the oldest event not fanned out yet"
)
QUEUE_REFRESHED = Gauge(
    "outbox_queue_stats_timestamp_seconds", "Unix time of the last successful queue-depth query"
)
LISTEN_UP = Gauge("outbox_listen_connected", "1 while the LISTEN connection is up (0 when polling only)")
READY = Gauge("outbox_worker_ready", "1 while the worker claims and sends")


def status_class(outcome: Outcome) -> str:
    if outcome.status_code is not None:
        return f"{outcome.status_code // 100}xx"
    return outcome.error_class or "unknown"


def record_outcome(outcome: Outcome) -> None:
    """Count one attempt (called from ``Completer.record``)."""
    result = "retrying" if outcome.status == "pending" else outcome.status
    stats = _STATS
    if result == "retrying" and outcome.error_class == "policy":
        stats.held += 1  # not an attempt: the URL policy held it, nothing was sent
        return
    stats.attempts[result] += 1
    if result != "retrying":
        stats.deliveries[result] += 1
    cls = status_class(outcome)
    stats.results[cls] = stats.results.get(cls, 0) + 1
    stats.duration.observe(outcome.duration_ms / 1000)


class Summary:
    """The worker's summary log line: every ``interval`` seconds while work
    flows, what happened since the last one (deliveries delivered and
    failed, attempts retried, deliveries held by the URL policy, events
    dispatched and their mean commit-to-dispatch lag). It reads the counters
    above and adds nothing per delivery."""

    def __init__(self, interval: float, in_flight: Callable[[], int], log: Any) -> None:
        self.interval = interval
        self._in_flight = in_flight
        self._log = log
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int, int, int, float]:
        s = _STATS
        return (s.deliveries["delivered"], s.attempts["retrying"], s.deliveries["failed"], s.held,
                s.dispatched, s.dispatch_lag.sum)  # fmt: skip

    def log_once(self) -> bool:
        """Log what changed since the last call, if anything did."""
        now, last = self._read(), self._last
        delivered, retried, failed, held, dispatched, lag = (a - b for a, b in zip(now, last, strict=True))
        self._last = now
        if not (delivered or retried or failed or held or dispatched):
            return False
        self._log.info(
            "summary",
            seconds=self.interval,
            delivered=delivered,
            retried=retried,
            failed=failed,
            held=held,
            events=dispatched,
            lag_ms=round(lag / dispatched * 1000, 1) if dispatched else None,
            in_flight=self._in_flight(),
        )
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.log_once()


def observe_dispatch(created_at: Iterable[datetime]) -> None:
    """Count a dispatched batch and each event's commit-to-dispatch lag."""
    now = datetime.now(UTC)
    lag = _STATS.dispatch_lag
    count = 0
    for moment in created_at:
        count += 1
        lag.observe(max(0.0, (now - moment).total_seconds()))
    _STATS.dispatched += count


def _set_queue(row: db.Row) -> None:
    for state in ("pending", "retrying", "in_flight", "failed"):
        QUEUE.labels(state).set(float(row[state]))
    OLDEST_PENDING.set(float(row["oldest_pending_seconds"]))
    UNDISPATCHED.set(float(row["undispatched"]))
    OLDEST_UNDISPATCHED.set(float(row["oldest_undispatched_seconds"]))
    QUEUE_REFRESHED.set(datetime.now(UTC).timestamp())


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` for one worker."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any], probes: Probes, log: Any) -> None:
        self._probes = probes
        self._pool = pool
        self._settings = settings
        self._log = log.bind(component="metrics")
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> OpsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.metrics_host, self._settings.metrics_port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._settings.metrics_port
        IN_FLIGHT.set_function(self._probes.in_flight)
        self._poller = asyncio.create_task(self._poll_queue(), name="metrics-queue")
        self._log.info("metrics listening", host=self._settings.metrics_host, port=self.port)
        return self

    async def stop(self) -> None:
        if self._poller:
            await db.stop_tasks([self._poller])  # it waits on the pool: see stop_tasks
        if self._runner:
            await self._runner.cleanup()

    async def _poll_queue(self) -> None:
        while True:
            try:
                async with self._pool.connection(timeout=5) as conn, conn.transaction():
                    # The one statement here that reads whole tables: let it
                    # scan them (the worker's sessions do not; see Worker._pool).
                    await conn.execute("set local enable_seqscan = on")
                    rows = await db.fetch_async(conn, "metrics_queue", {})
                _set_queue(rows[0])
            except Exception as exc:  # the database may be away; the gauges keep their last values
                self._log.warning("queue metrics query failed", error=str(exc).strip())
            await asyncio.sleep(self._settings.metrics_interval)

    async def _metrics(self, _: web.Request) -> web.Response:
        READY.set(1 if self._probes.ready() else 0)
        LISTEN_UP.set(1 if self._probes.listen_connected() else 0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks: dict[str, bool] = {
            "worker": self._probes.ready(),
            "database": False,
            "listen": self._probes.listening(),
        }
        problem: dict[str, str] = {}
        try:
            async with self._pool.connection(timeout=2) as conn:
                await db.fetch_async(conn, "ping", {})  # the outbox schema too
            checks["database"] = True
        except Exception as exc:
            problem = {"error": str(exc).strip()}
            self._log.info("readiness: database not usable", **problem)
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", **checks, **problem}, status=200 if ok else 503
        )


async def start_server(
    settings: Settings, pool: AsyncConnectionPool[Any], probes: Probes, log: Any
) -> OpsServer | None:
    """Start the ops server unless ``OUTBOX_METRICS_PORT`` is 0. A port taken
    (another worker on this host) costs the probes and metrics, never the
    worker: it warns and delivers on without them."""
    if settings.metrics_port == 0:
        return None
    try:
        return await OpsServer(settings, pool, probes, log).start()
    except OSError as exc:
        log.warning(
            "metrics and health server not started: its port is taken; delivering without it",
            host=settings.metrics_host,
            port=settings.metrics_port,
            error=exc.strerror or str(exc),
            fix="give each worker on a host its own OUTBOX_METRICS_PORT (0 turns the server off)",
        )
        return None
