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

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from outbox_worker import db

if TYPE_CHECKING:
    from aiohttp import web
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
    listen_connected: Callable[[], dict[str, bool]]  # per database: its LISTEN connection is up
    # Per database: its pool (None while it is retried with backoff) and what
    # is wrong with it, if anything ("" when it delivers).
    pools: Callable[[], dict[str, AsyncConnectionPool[Any] | None]]
    problems: Callable[[], dict[str, str]]
    # False when ``problems`` is already each database's latest verdict (a
    # fleet lending connections in turns: a ping would cost every database
    # a turn, and with hundreds of them outlast the probe's timeout).
    ping: bool = True


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

    def add_to(self, family: HistogramMetricFamily, database: str, created: float) -> None:
        cumulative = list(itertools.accumulate(self.counts))
        family.add_metric([database], list(zip(self.le, cumulative, strict=True)), sum_value=self.sum)
        # add_metric has no created=
        family.samples.append(Sample(f"{family.name}_created", {"database": database}, created))


class HotPathStats:
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


class _AllStats:
    """The hot-path numbers of every database this process serves, each
    under its ``database`` label (a custom collector)."""

    def __init__(self) -> None:
        self.by_database: dict[str, HotPathStats] = {}

    def stats(self, database: str) -> HotPathStats:
        found = self.by_database.get(database)
        if found is None:
            found = self.by_database[database] = HotPathStats()
        return found

    def _counter(
        self, name: str, doc: str, label: str | None, counts: Callable[[HotPathStats], dict[str, int]]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["database", *([label] if label else [])])
        for database, stats in list(self.by_database.items()):
            for value, count in list(counts(stats).items()):
                family.add_metric([database, *([value] if label else [])], count, created=stats.created)
        return family

    def _histogram(self, name: str, doc: str, buckets: Callable[[HotPathStats], _Buckets]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=["database"])
        for database, stats in list(self.by_database.items()):
            buckets(stats).add_to(family, database, stats.created)
        return family

    def collect(self) -> Iterator[Metric]:
        yield self._counter(
            "outbox_attempts",
            "HTTP attempts by result: delivered, retrying (another attempt follows), failed",
            "outcome",
            lambda s: s.attempts,
        )
        yield self._counter(
            "outbox_deliveries",
            "Deliveries finished, by final outcome: delivered or failed",
            "outcome",
            lambda s: s.deliveries,
        )
        yield self._counter(
            "outbox_attempt_results",
            "Attempts by HTTP status class (2xx..5xx) or, without a response, error class "
            "(timeout, connection, dns, invalid_target)",
            "status_class",
            lambda s: s.results,
        )
        yield self._histogram(
            "outbox_attempt_duration_seconds",
            "Duration of one HTTP attempt, response body included",
            lambda s: s.duration,
        )
        yield self._counter(
            "outbox_dispatched_events",
            "Events fanned out into deliveries",
            None,
            lambda s: {"": s.dispatched},
        )
        yield self._histogram(
            "outbox_dispatch_lag_seconds",
            "Time from an event's insert (its transaction's commit, near enough) to its fan-out",
            lambda s: s.dispatch_lag,
        )


# The label of what is counted without naming its database (a single
# database's worker names its own: Worker passes its stats along).
DEFAULT_DATABASE = "default"
_ALL = _AllStats()
REGISTRY.register(_ALL)  # a collector: anything with collect()


def stats_for(database: str) -> HotPathStats:
    """The hot-path numbers counted under ``database``."""
    return _ALL.stats(database)


IN_FLIGHT = Gauge("outbox_in_flight_requests", "HTTP requests in flight in this process")
QUEUE = Gauge(
    "outbox_queue_deliveries",
    "Deliveries by queue state (whole database; aggregate replicas with max)",
    ["database", "state"],
)
OLDEST_PENDING = Gauge(
    "outbox_queue_oldest_pending_age_seconds",
    "Age of the oldest pending delivery (whole database)",
    ["database"],
)
UNDISPATCHED = Gauge(
    "outbox_events_undispatched", "Events committed but not fanned out yet (whole database)", ["database"]
)
OLDEST_UNDISPATCHED = Gauge(
    "outbox_events_oldest_undispatched_age_seconds",
    "Age of the oldest event not fanned out yet",
    ["database"],
)
QUEUE_REFRESHED = Gauge(
    "outbox_queue_stats_timestamp_seconds", "Unix time of the last successful queue-depth query", ["database"]
)
LISTEN_UP = Gauge(
    "outbox_listen_connected", "1 while the LISTEN connection is up (0 when polling only)", ["database"]
)
READY = Gauge("outbox_worker_ready", "1 while the worker claims and sends")
DATABASE_UP = Gauge(
    "outbox_database_up",
    "1 while the database answers with a migrated outbox schema; 0 while it is down, unmigrated "
    "or retried with backoff",
    ["database"],
)


def status_class(outcome: Outcome) -> str:
    if outcome.status_code is not None:
        return f"{outcome.status_code // 100}xx"
    return outcome.error_class or "unknown"


def record_outcome(outcome: Outcome, stats: HotPathStats | None = None) -> None:
    """Count one attempt (called from ``Completer.record``) under its database's ``stats``."""
    result = "retrying" if outcome.status == "pending" else outcome.status
    stats = stats or stats_for(DEFAULT_DATABASE)
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
        totals = [0, 0, 0, 0, 0, 0.0]
        for s in list(_ALL.by_database.values()):  # the process's: every database's
            now = (s.deliveries["delivered"], s.attempts["retrying"], s.deliveries["failed"], s.held,
                   s.dispatched, s.dispatch_lag.sum)  # fmt: skip
            totals = [a + b for a, b in zip(totals, now, strict=True)]
        d, r, f, h, n, lag = totals
        return int(d), int(r), int(f), int(h), int(n), float(lag)

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


def observe_dispatch(created_at: Iterable[datetime], stats: HotPathStats | None = None) -> None:
    """Count a dispatched batch and each event's commit-to-dispatch lag."""
    stats = stats or stats_for(DEFAULT_DATABASE)
    now = datetime.now(UTC)
    lag = stats.dispatch_lag
    count = 0
    for moment in created_at:
        count += 1
        lag.observe(max(0.0, (now - moment).total_seconds()))
    stats.dispatched += count


def _set_queue(database: str, row: db.Row) -> None:
    for state in ("pending", "retrying", "in_flight", "failed"):
        QUEUE.labels(database, state).set(float(row[state]))
    OLDEST_PENDING.labels(database).set(float(row["oldest_pending_seconds"]))
    UNDISPATCHED.labels(database).set(float(row["undispatched"]))
    OLDEST_UNDISPATCHED.labels(database).set(float(row["oldest_undispatched_seconds"]))
    QUEUE_REFRESHED.labels(database).set(datetime.now(UTC).timestamp())


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` for one worker."""

    def __init__(self, settings: Settings, probes: Probes, log: Any) -> None:
        self._probes = probes
        self._settings = settings
        self._log = log.bind(component="metrics")
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> OpsServer:
        # Imported only to serve: a worker with OUTBOX_METRICS_PORT=0 (several
        # on one host, the bench) never loads aiohttp's server, ~11 MB resident.
        from aiohttp import web

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
            # Concurrently: a database that is slow or away delays no other's gauges.
            pools = self._probes.pools()
            await asyncio.gather(*(self._poll_one(name, pool) for name, pool in pools.items() if pool))
            await asyncio.sleep(self._settings.metrics_interval)

    async def _poll_one(self, database: str, pool: AsyncConnectionPool[Any]) -> None:
        try:
            async with pool.connection(timeout=5) as conn, conn.transaction():
                # The one statement here that reads whole tables: let it
                # scan them (the worker's sessions do not; see Worker._pool).
                await conn.execute("set local enable_seqscan = on")
                rows = await db.fetch_async(conn, "metrics_queue", {})
            _set_queue(database, rows[0])
        except Exception as exc:  # the database may be away; the gauges keep their last values
            self._log.warning("queue metrics query failed", database=database, error=str(exc).strip())

    async def _metrics(self, _: web.Request) -> web.Response:
        READY.set(1 if self._probes.ready() else 0)
        for database, up in self._probes.listen_connected().items():
            LISTEN_UP.labels(database).set(1 if up else 0)
        for database, problem in self._probes.problems().items():
            DATABASE_UP.labels(database).set(0 if problem else 1)
        from aiohttp import web

        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"status": "ok"})

    async def _ping(self, pool: AsyncConnectionPool[Any] | None, problem: str) -> str | None:
        """None when the database answers with its schema, else why not."""
        if pool is None:
            return problem or "not started"
        try:
            async with pool.connection(timeout=2) as conn:
                await db.fetch_async(conn, "ping", {})  # the outbox schema too
            return None
        except Exception as exc:
            return str(exc).strip() or type(exc).__name__

    async def _readyz(self, _: web.Request) -> web.Response:
        """Ready when started, LISTEN is as wanted and a database answers.
        With several databases, one that is away is reported under
        ``databases`` but does not make the process unready: the others deliver."""
        pools, problems = self._probes.pools(), self._probes.problems()
        names = list(pools)
        if self._probes.ping:
            answers = await asyncio.gather(*(self._ping(pools[n], problems.get(n, "")) for n in names))
        else:
            answers = [problems.get(n) or (None if pools[n] is not None else "not started") for n in names]
        # A fleet's own account of a database says more than a pool's timeout.
        errors = {
            name: problems.get(name) or error
            for name, error in zip(names, answers, strict=True)
            if error is not None
        }
        for name, error in errors.items():
            self._log.info("readiness: database not usable", database=name, error=error)
        checks: dict[str, bool] = {
            "worker": self._probes.ready(),
            "database": len(errors) < len(names),
            "listen": self._probes.listening(),
        }
        detail: dict[str, Any] = {}
        if len(names) > 1:
            detail["databases"] = {name: errors.get(name, "ok") for name in names}
        elif errors:
            detail["error"] = next(iter(errors.values()))
        ok = all(checks.values())
        from aiohttp import web

        return web.json_response(
            {"status": "ready" if ok else "not ready", **checks, **detail}, status=200 if ok else 503
        )


async def start_server(settings: Settings, probes: Probes, log: Any) -> OpsServer | None:
    """Start the ops server unless ``OUTBOX_METRICS_PORT`` is 0. A port taken
    (another worker on this host) costs the probes and metrics, never the
    worker: it warns and delivers on without them."""
    if settings.metrics_port == 0:
        return None
    try:
        return await OpsServer(settings, probes, log).start()
    except OSError as exc:
        log.warning(
            "metrics and health server not started: its port is taken; delivering without it",
            host=settings.metrics_host,
            port=settings.metrics_port,
            error=exc.strerror or str(exc),
            fix="give each worker on a host its own OUTBOX_METRICS_PORT (0 turns the server off)",
        )
        return None
