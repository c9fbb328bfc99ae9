"""``outbox-worker run`` over several databases (``OUTBOX_DATABASE_URLS``).

Each database gets a :class:`~outbox_worker.worker.Worker` of its own: its
pool and LISTEN connection, dispatcher, sender and completer, leases,
retries and auto-disable, exactly as when it is alone. What they share is the
process: one HTTP client, one ops server, one summary line, and one
:class:`~outbox_worker.budget.Budget` of request slots, held fairly.

A database that is down, unmigrated or slow costs the others nothing: its
worker's loops retry on their own with backoff (a worker whose schema is
missing is started again, with backoff, until it is migrated), a health
check reports it (log line, ``outbox_database_up``, ``/readyz``), and the
slots it does not use go to the others. When it returns, its backlog drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from outbox_worker import db, metrics
from outbox_worker.budget import Budget
from outbox_worker.client import HttpClient
from outbox_worker.databases import Database, shared_prefixes
from outbox_worker.errors import SchemaNotMigrated
from outbox_worker.jobs import refill_size
from outbox_worker.lending import ConnectionLender
from outbox_worker.logs import get_logger
from outbox_worker.netpolicy import UrlPolicy
from outbox_worker.settings import Settings
from outbox_worker.turns import LentPool, TurnScheduler
from outbox_worker.worker import Worker

# Seconds between health checks of each database, and the most a database
# whose worker could not start waits before it is tried again.
HEALTH_INTERVAL = 2.0
RESTART_MAX = 30.0


class Member:
    """One database of the fleet: its worker (None between restarts) and what is wrong with it."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.worker: Worker | None = None
        self.problem = "starting"

    def pool(self) -> AsyncConnectionPool[Any] | None:
        return self.worker.pool if self.worker is not None else None


class Fleet:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger(worker_id=settings.worker_id)
        self.members = [Member(d) for d in settings.databases]
        self.budget = Budget(settings.concurrency + refill_size(settings))
        # The client vets names under the widest policy the settings allow;
        # each request is checked under its own database's (client.post).
        self.http_policy = UrlPolicy.for_worker(settings)
        self.http_policy.set_database(allow_http=True, allow_private=True)
        self.stopping = asyncio.Event()
        self.started = False
        # Many databases: one bounded set of connections lent in turns, no
        # LISTEN (nor the quiet-NOTIFY flag's session); a database's health
        # is what its last turn found (see turns).
        self.lender: ConnectionLender | None = None
        self.turns: TurnScheduler | None = None
        self.worker_settings = settings
        self.health_interval = HEALTH_INTERVAL
        if settings.database_connections:
            self.lender = ConnectionLender(settings.database_connections)
            self.turns = TurnScheduler(self.lender, settings.poll_interval, self.log)
            self.worker_settings = settings.model_copy(update={"listen": False, "quiet_notify": False})

    def stop(self) -> None:
        self.stopping.set()
        for member in self.members:
            if member.worker is not None:
                member.worker.stop()

    def _in_flight(self) -> int:
        return sum(m.worker.sender.in_flight for m in self.members if m.worker and m.worker.sender)

    def _listening(self) -> bool:
        """Every database that answers has its wake-ups (or polls by choice)."""
        return all(m.worker._listening() for m in self.members if m.worker and not m.problem)

    def problems(self) -> dict[str, str]:
        return {m.database.name: m.problem for m in self.members}

    async def run(self) -> int:
        settings = self.settings
        probes = metrics.Probes(
            in_flight=self._in_flight,
            ready=lambda: self.started,
            listening=self._listening,
            listen_connected=lambda: {
                m.database.name: m.worker is not None and m.worker.listen_connected() for m in self.members
            },
            pools=lambda: {m.database.name: m.pool() for m in self.members},
            problems=self.problems,
            ping=self.turns is None,
        )
        ops = await metrics.start_server(settings, probes, self.log)
        http = HttpClient(settings, self.http_policy)
        tasks = [
            asyncio.create_task(self._serve(m, http), name=f"db-{m.database.name}") for m in self.members
        ]
        tasks += [asyncio.create_task(self._watch(m), name=f"health-{m.database.name}") for m in self.members]
        background: list[asyncio.Task[None]] = []
        turns = [asyncio.create_task(self.turns.run(), name="turns")] if self.turns else []
        if settings.summary_interval:
            summary = metrics.Summary(settings.summary_interval, self._in_flight, self.log)
            background.append(asyncio.create_task(summary.run(), name="summary"))
        background.append(asyncio.create_task(self._check_prefixes(), name="prefixes"))
        self.started = True
        self.log.info(
            "fleet started",
            databases=[m.database.name for m in self.members],
            concurrency=settings.concurrency,
        )
        await self.stopping.wait()
        self.started = False
        self.stop()
        await asyncio.gather(*tasks[: len(self.members)], return_exceptions=True)  # each drains
        await db.stop_tasks(tasks[len(self.members) :] + background + turns)  # turns served the drains
        await http.close()
        if ops:
            await ops.stop()
        self.log.info("fleet stopped")
        return 0

    async def _serve(self, member: Member, http: HttpClient) -> None:
        """Run ``member``'s worker until the fleet stops; start it again, with
        backoff, when it ends early (its schema is missing, or it failed)."""
        name = member.database.name
        delay = 1.0
        while not self.stopping.is_set():
            share = self.budget.share(
                name, member.database.weight, lambda: self._wake(member), refill_size(self.settings)
            )
            worker = member.worker = Worker(
                self.worker_settings, member.database, http=http, share=share, turns=self.turns
            )
            try:
                await worker.run()
                if self.stopping.is_set():
                    return
                member.problem = "stopped unexpectedly"
            except SchemaNotMigrated as exc:
                member.problem = f"unmigrated: {exc}"
            except Exception as exc:
                member.problem = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            finally:
                share.close()
            self.log.error(
                "database not served; retrying", database=name, problem=member.problem, retry_in=delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)

    @staticmethod
    def _wake(member: Member) -> None:
        """Slots ``member`` wanted are free: its sender claims again."""
        if member.worker is not None and member.worker.sender is not None:
            member.worker.sender.note_backlog()

    async def _watch(self, member: Member) -> None:
        """Report ``member``'s health when it changes: a log line, the gauge
        and ``/readyz`` read :attr:`Member.problem`."""
        name = member.database.name
        while True:
            worker = member.worker
            problem = member.problem
            if isinstance(pool := member.pool(), LentPool):
                # In turns, a database's health is what its last turn found:
                # a ping of its own would cost a turn.
                if worker is not None and worker.ready and pool.seat.problem is not None:
                    problem = pool.seat.problem
            elif worker is not None and worker.pool is not None and worker.ready:
                try:
                    async with worker.pool.connection(timeout=self.health_interval) as conn:
                        await db.fetch_async(conn, "ping", {})
                    problem = ""
                except SchemaNotMigrated as exc:
                    problem = f"unmigrated: {exc}"
                except Exception as exc:
                    problem = await self._cause(member, exc)
            if problem != member.problem:
                if problem:
                    self.log.warning(
                        "database not answering; its worker retries", database=name, problem=problem
                    )
                else:
                    self.log.info("database answering", database=name)
                member.problem = problem
            metrics.DATABASE_UP.labels(name).set(0 if member.problem else 1)
            # Until its worker has started, look again soon: "starting" is no state to report for long.
            await asyncio.sleep(0.1 if member.problem == "starting" else self.health_interval)

    async def _cause(self, member: Member, exc: Exception) -> str:
        """Why ``member``'s database does not answer, in one line. A pool only
        says it had no connection to give: one connection of our own, made
        only while the database is away, says why (refused, no such database,
        authentication)."""
        if isinstance(exc, PoolTimeout):
            try:
                conn = await psycopg.AsyncConnection.connect(
                    db.libpq_url(member.database.url), connect_timeout=max(1, int(HEALTH_INTERVAL))
                )
                await conn.close()
            except Exception as direct:
                exc = direct
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    async def _check_prefixes(self) -> None:
        """Once every database has been read: two sharing a webhook-id prefix
        (one restored from another's copy, or never migrated as a set) would
        send receivers the same ids for different events. Logged, not
        refused: deliveries go on."""
        while True:
            workers = [m.worker for m in self.members]
            if all(w is not None and w.sender is not None and w.prefix_known for w in workers):
                prefixes = {w.database.name: w.message_prefix for w in workers if w is not None}
                if problem := shared_prefixes(prefixes):
                    self.log.error("webhook-ids may collide across databases", problem=problem)
                return
            await asyncio.sleep(HEALTH_INTERVAL)


async def serve(settings: Settings) -> int:
    """Serve every database of ``settings`` until SIGTERM or SIGINT."""
    fleet = Fleet(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fleet.stop)
    return await fleet.run()
