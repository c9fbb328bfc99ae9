"""``outbox-worker run``: one process of the delivery engine.

Reads as its data flows: listener (wake-up) -> dispatcher (events ->
deliveries) -> sender (claim -> HTTP) -> completer (attempt log), with the
maintenance services beside it (failing-webhook disabler, retention).
Replicas coordinate only through Postgres: SKIP LOCKED claims and leases on
the database clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from outbox_worker import db, metrics, pooling, tracing
from outbox_worker.attempt import Attempter
from outbox_worker.budget import Share
from outbox_worker.client import HttpClient
from outbox_worker.completer import Completer
from outbox_worker.databases import Database
from outbox_worker.dispatch import Dispatcher
from outbox_worker.errors import SchemaNotMigrated
from outbox_worker.listener import BusyFlag, Listener
from outbox_worker.logs import get_logger
from outbox_worker.maintenance import (
    FailingWebhookDisabler,
    HeadUnparker,
    PolicyWatcher,
    PreviousSecretEraser,
    SecretSealer,
)
from outbox_worker.netpolicy import UrlPolicy
from outbox_worker.retention import Retention, connector
from outbox_worker.sender import Sender
from outbox_worker.settings import Settings
from outbox_worker.signing import load_payload
from outbox_worker.turns import LEND_WAIT, LentPool, TurnScheduler
from outbox_worker.turnwork import TurnWork, Upkeep

# While "busy" (quiet NOTIFY), the dispatcher polls instead of waiting for
# notifications: soon after a round that found events, backing off to at most
# SETTLE_MAX while the outbox is empty but an emitting transaction is in flight.
SETTLE_MIN = 0.001
SETTLE_MAX = 0.02

# The young generation's collection threshold: at least this many, and this
# many per request slot (see tune_gc).
GC_YOUNG_MIN = 40_000
GC_YOUNG_PER_SLOT = 40


class Worker:
    """The delivery engine over one database. Alone, it owns its process (HTTP
    client, ops server); in a :class:`~outbox_worker.fleet.Fleet` it shares the
    fleet's ``http`` client and a ``share`` of its request slots."""

    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        http: HttpClient | None = None,
        share: Share | None = None,
        turns: TurnScheduler | None = None,
    ) -> None:
        self.database = database = database or settings.databases[0]
        self._turns = turns
        self.settings = settings = pooling.restrict(settings.for_database(database))
        self._shared_http = http
        self._share = share
        self.stats = metrics.stats_for(database.name)
        self.message_prefix = ""  # outbox.config.message_id_prefix, once prefix_known
        self.prefix_known = False
        self.pool: AsyncConnectionPool[Any] | None = None
        if http is None:
            self.log = get_logger(worker_id=settings.worker_id)
        else:
            self.log = get_logger(worker_id=settings.worker_id, database=database.name)
        sets = pooling.session_settings(settings)
        self.policy = pooling.Policy(settings.pooler, self.log, "worker", sets=sets)
        self.stopping = asyncio.Event()
        self.dispatch_wake = asyncio.Event()
        self.ready = False
        self.listener: Listener | None = None
        self.sender: Sender | None = None
        self.completer: Completer | None = None
        self.ops: metrics.OpsServer | None = None
        self.url_policy = UrlPolicy.for_worker(settings)

    def stop(self) -> None:
        self.stopping.set()

    def _listening(self) -> bool:
        """Readiness of the wake-ups: LISTEN is up, or the worker does not
        listen, or a transaction-mode pooler refused it (the worker polls)."""
        listener = self.listener
        return not self.settings.listen or (listener is not None and (listener.connected or listener.refused))

    def _key_freed(self) -> None:
        if self.sender is not None:
            self.sender.note_backlog()  # the next delivery of a key is due: claim it

    def listen_connected(self) -> bool:
        return self.listener is not None and self.listener.connected

    async def _prefix_once(self, pool: AsyncConnectionPool[Any], attempter: Attempter) -> None:
        async with pool.connection(timeout=self.settings.connect_timeout) as conn:
            [row] = await db.fetch_async(conn, "message_id_prefix", {})
        self.message_prefix = attempter.message_prefix = row["message_id_prefix"]
        self.prefix_known = True

    async def _read_prefix(self, pool: AsyncConnectionPool[Any], attempter: Attempter) -> None:
        """The database's webhook-id prefix, before anything is sent: ids must
        never change between attempts. Retried with backoff while the database
        is away; a missing schema ends the worker."""
        delay = 0.1
        while True:
            try:
                await self._prefix_once(pool, attempter)
                return
            except SchemaNotMigrated:
                raise
            except Exception as exc:
                self.log.warning(
                    "reading the webhook-id prefix failed", error=str(exc).strip(), retry_in=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _produce(
        self,
        pool: AsyncConnectionPool[Any],
        attempter: Attempter,
        loops: list[Callable[[], Coroutine[Any, Any, None]]],
    ) -> None:
        """Claim and dispatch once the webhook-id prefix is known."""
        await self._read_prefix(pool, attempter)
        await asyncio.gather(*(loop() for loop in loops))

    def _pool(self) -> AsyncConnectionPool[Any]:
        settings = self.settings

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            # Bodies are encoded from jsonb parsed the JavaScript way (see signing).
            set_json_loads(load_payload, conn)
            # The worker's planner and commit settings, on sessions that are
            # its own; behind a transaction-mode pooler none (see pooling).
            await self.policy.configure_session(conn)

        kwargs = {
            "autocommit": True,
            "prepare_threshold": 0 if settings.prepare_statements else None,
            "application_name": f"outbox-worker {settings.worker_id}"[:63],
        }
        name = "outbox-worker" if self._shared_http is None else f"outbox-worker {self.database.name}"
        if self._turns is not None:  # many databases: connections lent in turns (see turns)
            url = db.libpq_url(settings.database_url)
            return LentPool(
                self._turns, url, kwargs=kwargs, configure=configure, name=name, database=self.database.name
            )
        return db.LifoConnectionPool(
            db.libpq_url(settings.database_url),
            min_size=settings.pool_size,
            max_size=settings.pool_size,
            kwargs=kwargs,
            configure=configure,
            open=False,
            name=name,
        )

    @staticmethod
    async def _retain(retention: Retention, spread: bool) -> None:
        """Retention's passes; in turns, the first one at a random moment of
        its interval: hundreds of databases starting together would
        otherwise all run a pass at once, each pass several turns."""
        if spread:
            await asyncio.sleep(random.uniform(0, retention.interval))
        await retention.run()

    def _turn_work(self, pool: AsyncConnectionPool[Any], completer: Completer) -> TurnWork | None:
        if self._turns is None or not isinstance(pool, LentPool):
            return None
        return TurnWork(self._turns, pool.seat, completer, self.settings.batch_size, self.log)

    async def _dispatch_loop(self, dispatcher: Dispatcher, sender: Sender, busy: BusyFlag | None) -> None:
        delay = 0.1
        settle = SETTLE_MIN
        while not self.stopping.is_set():
            # Cleared before dispatching, not after: a notification arriving
            # during a batch must start another one, not be swallowed.
            self.dispatch_wake.clear()
            timeout = self.settings.poll_interval
            try:
                taken = 0
                while True:
                    batch = await dispatcher.dispatch_batch()
                    taken += batch
                    if dispatcher.unleased:
                        sender.note_backlog()  # rows we had no room for: the sender claims them
                        if busy is not None:
                            await busy.nudge_peers()  # nobody else wakes them while we are busy
                    if batch < self.settings.batch_size:
                        break
                if busy is not None:
                    if not busy.held and self.dispatch_wake.is_set():
                        # Woken again while dispatching: events arrive back to
                        # back, so spare the emitters their NOTIFY.
                        await busy.acquire()
                    if busy.held:
                        if taken:
                            settle = SETTLE_MIN
                        elif await busy.release():
                            continue  # no skipped NOTIFY in flight: one more claim sees them all
                        else:
                            settle = min(settle * 2, SETTLE_MAX)
                        timeout = settle
                delay = 0.1
            except Exception as exc:
                self.log.warning("dispatch failed", error=str(exc).strip(), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.dispatch_wake.set()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dispatch_wake.wait(), timeout)

    async def _first_policy(self, watcher: PolicyWatcher) -> None:
        """Read the database's URL policy before sending anything. A missing
        schema ends the worker; an unreachable database does not (until it
        answers, the policy is the strictest and refused deliveries are held).
        In turns, the wait is for the database's turn, behind the others'."""
        try:
            await watcher.run_once(wait=LEND_WAIT if self._turns else self.settings.connect_timeout)
        except SchemaNotMigrated:
            raise
        except Exception as exc:
            self.log.warning("database not answering at start; the worker retries", error=str(exc).strip())

    async def run(self) -> int:
        settings = self.settings
        # First: OTEL_* variables the worker cannot honour stop it before it starts.
        traces = tracing.from_environment()
        self.pool = pool = self._pool()
        name = self.database.name
        probes = metrics.Probes(
            in_flight=lambda: self.sender.in_flight if self.sender else 0,
            ready=lambda: self.ready,
            listening=self._listening,
            listen_connected=lambda: {name: self.listen_connected()},
            pools=lambda: {name: pool},
            problems=lambda: {name: ""},
        )
        if self._shared_http is None:  # in a fleet, the fleet serves them
            self.ops = await metrics.start_server(settings, probes, self.log)  # /metrics, /healthz, /readyz
        await pool.open(wait=False)
        watcher = PolicyWatcher(pool, self.url_policy, self.log)
        try:
            await self._first_policy(watcher)
        except SchemaNotMigrated:
            # Nothing would work: say so at once, instead of warning forever.
            if self.ops:
                await self.ops.stop()
            await pool.close()
            raise
        http = self._shared_http or HttpClient(settings, self.url_policy)
        self.completer = completer = Completer(
            pool, settings, self.log, lambda: self._key_freed(), stats=self.stats
        )
        attempter = Attempter(http, settings, self.url_policy)
        # Many databases: no loops of their own, their work runs in turns (turnwork).
        work = self._turn_work(pool, completer)
        self.sender = sender = Sender(
            pool,
            attempter,
            settings,
            work.record if work else completer.record,
            self.log,
            traces,
            share=self._share,
        )
        dispatcher = Dispatcher(pool, settings, sender.box, sender, self.log, traces, stats=self.stats)
        upkeep: list[tuple[str, Any]] = [
            ("maintenance", FailingWebhookDisabler(pool, settings, self.log)),
            ("secret-eraser", PreviousSecretEraser(pool, self.log)),
            ("ordering", HeadUnparker(pool, self.log, self._key_freed)),
            ("url-policy", watcher),
        ]
        if sender.box is not None:
            upkeep.append(("secret-sealer", SecretSealer(pool, sender.box, self.log)))
        background: list[asyncio.Task[None]] = []
        if work is None:
            background.append(asyncio.create_task(completer.run(), name="completer"))
            background += [asyncio.create_task(service.run(), name=name) for name, service in upkeep]
        # Many databases: each batch on a lent connection, within the bound.
        lent = self._turns is not None
        retention = Retention(
            pool,
            pool.connection
            if lent
            else connector(
                db.libpq_url(settings.database_url), f"outbox-worker {settings.worker_id} retention"
            ),
            settings.retention_window,
            settings.worker_id,
            self.log,
            flush_commits=settings.synchronous_commit,
            per_batch=lent,
        )
        background.append(asyncio.create_task(self._retain(retention, spread=lent), name="retention"))
        if settings.summary_interval and self._shared_http is None:  # a fleet logs one for all
            summary = metrics.Summary(settings.summary_interval, lambda: sender.in_flight, self.log)
            background.append(asyncio.create_task(summary.run(), name="summary"))
        # "busy" is a session-level lock: only where LISTEN works (no
        # transaction-mode pooler) can it be held, and only then is it useful.
        quiet = settings.quiet_notify and settings.listen
        busy = BusyFlag(db.libpq_url(settings.database_url), self.log, self.policy.check) if quiet else None
        producers = []
        if work is None:
            loops = [lambda: self._dispatch_loop(dispatcher, sender, busy), sender.run]
            producers.append(asyncio.create_task(self._produce(pool, attempter, loops), name="producers"))
        else:

            async def first() -> None:  # the turn's own connection (turns.LentPool)
                if not self.url_policy.known:
                    await watcher.run_once()
                await self._prefix_once(pool, attempter)

            work.start(dispatcher, sender, first, [Upkeep(n, u.interval, u.run_once) for n, u in upkeep])
        if settings.listen:

            def on_notify(payload: str) -> None:
                if payload == "deliveries":
                    sender.note_backlog()
                else:
                    self.dispatch_wake.set()

            self.listener = Listener(
                db.libpq_url(settings.database_url), on_notify, self.log, self.policy.check
            )
            background.append(asyncio.create_task(self.listener.run(), name="listener"))
        self.ready = True
        self.log.info(
            "worker started",
            concurrency=settings.concurrency,
            batch_size=settings.batch_size,
            listen=settings.listen,
            tracing=traces is not None,
        )
        await self.stopping.wait()

        self.log.info("stopping", in_flight=sender.in_flight, grace=settings.shutdown_grace)
        self.ready = False
        await db.stop_tasks(producers)
        if work is not None:
            work.stop()  # later turns only lend their connection: the last writes below
        if busy is not None:
            await busy.close()  # emitters notify again, for whoever keeps running
        unfinished = await sender.drain(settings.shutdown_grace)
        try:
            await completer.flush()
            if unfinished:
                async with pool.connection() as conn:
                    await db.fetch_async(
                        conn, "release_leases", {"ids": unfinished, "worker_id": settings.worker_id}
                    )
        except Exception as exc:  # the leases expire on their own; nothing is lost
            self.log.error("could not hand back leases", error=str(exc).strip(), deliveries=len(unfinished))
        await db.stop_tasks(background)
        if self._shared_http is None:
            await http.close()
        if self.ops:
            await self.ops.stop()
        await pool.close()
        if traces is not None:
            await asyncio.to_thread(traces.shutdown)  # the spans still buffered go out
        self.log.info("stopped", handed_back=len(unfinished), completed=completer.written)
        return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: it halves the event loop's share of each delivery
    (timers, socket writes) in the throughput benchmark."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_gc(concurrency: int) -> None:
    """Stop the cyclic garbage collector from re-scanning what lives long.

    CPython collects its youngest generation after 700 net allocations, and
    every collection walks each object still alive in the generations it
    collects. A worker keeps thousands alive for long: the imported modules,
    and each request in flight (its task, coroutine frames, aiohttp's request
    and response, timers), which a claim starts a batch (200) at a time. With
    1,000 requests in flight against a 100 ms receiver the collector took
    27-29% of the worker's CPU (1.6-1.9 s of 6.0-6.4 s for 20,000
    deliveries; 10% when draining against an instant receiver). Startup's
    survivors are frozen (the permanent generation, never walked again) and
    the threshold sits above what the requests in flight allocate, so that
    most of a request's objects are freed before a collection would walk
    them: at 20 per slot the collector still took 10-18% of the CPU at 1,000
    in flight against 100 ms, at 40 5-6%, at 60 2-3%; at 256 in flight a
    threshold of 10,240 gave it 7-10%, 40,000 3-4%. Cycles are still
    collected, after at most that many net allocations, which bounds the
    garbage they can hold: against a receiver refusing every connection (an
    exception per attempt, 1,000 in flight) peak RSS was 88 MB at 20 per
    slot, 90 at 40, 91-95 at 60 and 107-109 at 160 (82 -> 85-86 MB at 256
    in flight, 10,240 -> 40,000). Only for the worker process: it owns its
    interpreter, a library caller's does not belong to us.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(GC_YOUNG_MIN, GC_YOUNG_PER_SLOT * concurrency))


def run_forever(
    settings: Settings, serving: Callable[[Settings], Coroutine[Any, Any, int]] | None = None
) -> int:
    """``outbox-worker run``: serve on the fastest available event loop
    (``serving``: another way to serve, such as the fleet's)."""
    tune_gc(settings.concurrency)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run((serving or serve)(settings))


async def serve(settings: Settings) -> int:
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    return await worker.run()
