"""Turns: hundreds of databases served over a few lent connections.

With ``OUTBOX_DATABASE_CONNECTIONS`` a fleet holds at most that many
connections (:class:`~outbox_worker.lending.ConnectionLender`) for all its
databases. Had each database's loops borrowed on their own (fan-out, claim,
completions, upkeep, each on its own timer), nearly every statement would
pay for a connection made in place of another database's. Instead the
:class:`TurnScheduler` gives a database a *turn*: one borrowed connection
on which its worker does everything due (:mod:`~outbox_worker.turnwork`):
writes the outcomes pending, runs the upkeep due, fans out new events and
claims due deliveries, then gives the connection back. The requests then
go out with no connection held; their outcomes ask for the next turn.

Which database next: those with known work (outcomes to write, a backlog,
a retry falling due, a task waiting for its connection) in round robin,
then those due an idle poll, which comes every ``IDLE_POLLS`` poll
intervals. New events are told apart without a connection to each
database: every poll interval one statement per server reads
``pg_stat_database.tup_inserted`` for all its databases, and a database
whose count moved has its turn (docs/databases.md, "Turns").

Everything else a database's worker runs on its pool (a retention batch,
the metrics query, shutdown's last writes) borrows the connection of a turn
of its database, in that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from outbox_worker import db
from outbox_worker.errors import SchemaNotMigrated
from outbox_worker.lending import ConnectionLender

Conn = psycopg.AsyncConnection[Any]
Configure = Callable[[Conn], Awaitable[None]]
Work = Callable[[], Awaitable[bool]]

# An idle database (no known work, no new inserts seen) has a turn every
# this many poll intervals: for retries of other workers' leases, events
# the statistics were late to show, and upkeep.
IDLE_POLLS = 10
# While databases with work wait, one pick in this many goes to an idle poll.
POLL_SHARE = 4
# Rounds of work one turn may run back to back (work asked for meanwhile)
# before the connection goes to the next database.
ROUNDS = 2
# A turn that failed (the database away, a statement refused) is tried
# again after this, doubling up to RETRY_MAX.
RETRY_MIN = 0.1
RETRY_MAX = 5.0
# How long a turn waits for one of the lender's connections before trying again.
LEND_WAIT = 30.0


def describe(exc: BaseException) -> str:
    """Why a database's turn failed, in one line (its health in ``/readyz``)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SchemaNotMigrated):
        return f"unmigrated: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def server_of(url: str) -> tuple[str, str, str]:
    """What tells one server from another: ``pg_stat_database`` of any of
    its databases lists them all."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    return str(params.get("host", "")), str(params.get("hostaddr", "")), str(params.get("port", ""))


class Seat:
    """One database's place in the round of turns."""

    def __init__(self, pool: LentPool, name: str, dbname: str, server: tuple[str, str, str]) -> None:
        self.pool = pool
        self.name = name
        self.dbname = dbname
        self.server = server
        self.work: Work | None = None  # the worker's turn, once it has started
        self.queue = ""  # "urgent", "poll" or "" (in no queue)
        self.running = False
        self.wanted = False
        self.closed = False
        self.next_poll = 0.0  # its first turn at once
        self.due_at = math.inf  # a retry falls due
        self.retry_at = 0.0  # after a failed turn
        self.backoff = 0.0
        self.idle_interval = 0.0
        self.borrowers: deque[asyncio.Future[Conn]] = deque()
        self.conn: Conn | None = None  # during its turn
        self.user: asyncio.Task[Any] | None = None  # who runs statements on it now
        self.depth = 0
        self.returned = asyncio.Event()
        self.problem: str | None = None  # None: no turn yet; "": the last one worked
        self.turns = 0
        self.inserted: int | None = None  # pg_stat_database.tup_inserted, last seen


class TurnScheduler:
    """Gives the fleet's databases turns on the lender's connections: at most
    ``lender.limit`` turns at once, each on one connection."""

    def __init__(self, lender: ConnectionLender, poll_interval: float, log: Any) -> None:
        self.lender = lender
        self.poll_interval = poll_interval
        self.log = log.bind(component="turns")
        self.seats: list[Seat] = []
        self._urgent: deque[Seat] = deque()
        self._polls: deque[Seat] = deque()
        self._picks = 0
        self._queued = asyncio.Event()
        self._probe_failed: set[tuple[str, str, str]] = set()
        self._probed: dict[tuple[str, str, str], float] = {}  # when each server's statistics were read
        self.turns = 0  # turns run so far
        self.probes = 0  # statistics read so far

    # -- seats ----------------------------------------------------------------

    def seat(self, pool: LentPool, name: str, url: str) -> Seat:
        dbname = str(psycopg.conninfo.conninfo_to_dict(url).get("dbname", ""))
        seat = Seat(pool, name, dbname, server_of(url))
        seat.idle_interval = IDLE_POLLS * self.poll_interval
        self.seats.append(seat)
        return seat

    def leave(self, seat: Seat) -> None:
        seat.closed = True
        seat.work = None
        with contextlib.suppress(ValueError):
            self.seats.remove(seat)
        for fut in seat.borrowers:
            if not fut.done():
                fut.set_exception(PoolClosed(f"the pool of database {seat.name} is closed"))
        seat.borrowers.clear()

    def want(self, seat: Seat) -> None:
        """``seat`` has work: a turn as soon as one is free (after its backoff)."""
        seat.wanted = True
        ready = time.monotonic() >= seat.retry_at
        if ready and not seat.running and seat.queue != "urgent" and not seat.closed:
            self._enqueue(seat, "urgent")

    def _enqueue(self, seat: Seat, queue: str) -> None:
        seat.queue = queue
        (self._urgent if queue == "urgent" else self._polls).append(seat)
        self._queued.set()

    # -- running --------------------------------------------------------------

    async def run(self) -> None:
        """Turns until cancelled: ``lender.limit`` runners, a timer for idle
        polls and retries, a probe of each server's statistics."""
        tasks = [asyncio.create_task(self._runner(), name="turns") for _ in range(self.lender.limit)]
        tasks.append(asyncio.create_task(self._timer(), name="turns-timer"))
        tasks.append(asyncio.create_task(self._prober(), name="turns-probe"))
        try:
            await asyncio.gather(*tasks)
        finally:
            await db.stop_tasks(tasks)

    async def _runner(self) -> None:
        while True:
            seat = await self._next()
            await self._turn(seat)

    async def _next(self) -> Seat:
        while True:
            self._picks += 1
            first, second = self._urgent, self._polls
            if self._picks % POLL_SHARE == 0:
                first, second = second, first
            for queue, kind in ((first, first is self._urgent), (second, second is self._urgent)):
                while queue:
                    seat = queue.popleft()
                    if seat.queue == ("urgent" if kind else "poll") and not seat.closed:
                        seat.queue = ""
                        return seat
            self._queued.clear()
            await self._queued.wait()

    async def _timer(self) -> None:
        tick = min(0.1, self.poll_interval / 4)
        while True:
            now = time.monotonic()
            for seat in self.seats:
                if seat.queue == "urgent" or seat.running or now < seat.retry_at:
                    continue
                if seat.wanted or seat.borrowers or now >= seat.due_at:
                    self._enqueue(seat, "urgent")
                elif not seat.queue and now >= seat.next_poll:
                    self._enqueue(seat, "poll")
            await asyncio.sleep(tick)

    async def _prober(self) -> None:
        """Every poll interval, each server's statistics: on the connection of
        a turn on that server if one ended lately (see _turn), else on one
        of its own (concurrently: a server away delays no other's)."""
        while True:
            now = time.monotonic()
            due = {
                s.server for s in self.seats if now >= self._probed.get(s.server, 0.0) + self.poll_interval
            }
            await asyncio.gather(*(self._probe(server) for server in due))
            await asyncio.sleep(self.poll_interval / 4)

    async def _turn(self, seat: Seat) -> None:
        seat.running = True
        now = time.monotonic()
        asked = seat.wanted or now >= seat.due_at
        if now >= seat.due_at:
            seat.due_at = math.inf  # its claim, now, takes what fell due
        more = False
        conn: Conn | None = None
        try:
            conn = await self.lender.borrow(seat.pool, LEND_WAIT)
            seat.conn, seat.user, seat.depth = conn, asyncio.current_task(), 1
            for round_ in range(ROUNDS):
                # Asked for again during the first round (its own fan-out
                # left rows to claim, its worker just started): at once.
                if seat.work is not None and (round_ == 0 or seat.wanted):
                    seat.wanted = False
                    more = await seat.work() or more
                await self._serve_borrowers(seat, conn)
                if conn.closed or not (seat.wanted and seat.work is not None):
                    break
            if conn.closed:
                raise psycopg.OperationalError("the connection was lost during the turn")
            seat.problem, seat.backoff = "", 0.0
            if time.monotonic() >= self._probed.get(seat.server, 0.0) + self.poll_interval:
                await self._read_statistics(seat.server, conn)  # the turns keep every connection busy
        except PoolTimeout:
            more = True  # the lender's connections were all busy: no verdict on this database
        except Exception as exc:
            self._failed(seat, exc)
            more = False
            # Its work, asked for, was not done: tried again after the backoff,
            # not at the idle poll (the round cleared the ask before it failed).
            seat.wanted = seat.wanted or asked
        finally:
            seat.conn, seat.user, seat.depth = None, None, 0
            if conn is not None:
                await self.lender.give_back(seat.pool, conn)
            seat.running = False
            seat.turns += 1
            self.turns += 1
            seat.next_poll = time.monotonic() + seat.idle_interval
        if more or seat.wanted or seat.borrowers:
            self.want(seat)

    async def _serve_borrowers(self, seat: Seat, conn: Conn) -> None:
        """Lend the turn's connection to the tasks waiting for one of this
        database, one after another."""
        while seat.borrowers and not conn.closed:
            fut = seat.borrowers.popleft()
            if fut.done():
                continue  # gave up waiting
            seat.user, seat.depth = None, 0
            seat.returned.clear()
            fut.set_result(conn)
            await seat.returned.wait()
            seat.user, seat.depth = asyncio.current_task(), 1
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                break  # left in a transaction: given back to the lender, it closes
            # The borrower may want it again at once (shutdown's writes come in a row).
            await asyncio.sleep(0)

    def _failed(self, seat: Seat, exc: BaseException) -> None:
        problem = describe(exc)
        if problem != seat.problem:
            self.log.warning("turn failed; retried", database=seat.name, error=problem)
        seat.problem = problem
        seat.backoff = min(max(RETRY_MIN, seat.backoff * 2), RETRY_MAX)
        seat.retry_at = time.monotonic() + seat.backoff
        for fut in seat.borrowers:  # those waiting fail as a pool's would
            if not fut.done():
                fut.set_exception(exc)
        seat.borrowers.clear()

    # -- borrowing outside the worker's own work ------------------------------

    async def borrow(self, seat: Seat, wait: float) -> Conn:
        """The connection of ``seat``'s next turn, for the calling task alone
        until it gives it back (:meth:`returned`)."""
        if seat.closed:
            raise PoolClosed(f"the pool of database {seat.name} is closed")
        fut: asyncio.Future[Conn] = asyncio.get_running_loop().create_future()
        seat.borrowers.append(fut)
        self.want(seat)
        try:
            async with asyncio.timeout(wait):
                conn = await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.returned(seat)  # handed over as this task was cancelled: never used
            fut.cancel()
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"no turn of database {seat.name} came in {wait:.2f} sec") from None
            raise
        seat.user, seat.depth = asyncio.current_task(), 1
        return conn

    def returned(self, seat: Seat) -> None:
        seat.user, seat.depth = None, 0
        seat.returned.set()

    # -- new events, told by the statistics -----------------------------------

    async def _probe(self, server: tuple[str, str, str]) -> None:
        """One statement for all the databases of ``server``: those whose
        count of inserted rows moved since the last look have a turn."""
        seats = [s for s in self.seats if s.server == server and not s.closed]
        if not seats:
            return
        home = next((s for s in seats if s.problem == ""), seats[0])
        try:
            owner, conn = await self.lender.borrow_any(home.pool, {s.pool for s in seats}, self.poll_interval)
        except PoolTimeout:
            return  # every connection busy with turns: look next time
        except Exception:
            return  # that database is away: its turns say so
        try:
            await self._read_statistics(server, conn)
        finally:
            await self.lender.give_back(owner, conn)

    async def _read_statistics(self, server: tuple[str, str, str], conn: Conn) -> None:
        self._probed[server] = time.monotonic()
        seats = [s for s in self.seats if s.server == server and not s.closed]
        try:
            rows = await db.fetch_async(
                conn, "database_inserts", {"names": sorted({s.dbname for s in seats})}
            )
        except Exception as exc:
            if server not in self._probe_failed:
                self._probe_failed.add(server)
                self.log.warning("reading pg_stat_database failed; idle databases are polled instead",
                                 error=describe(exc))  # fmt: skip
            for seat in seats:
                seat.idle_interval = self.poll_interval
            return
        self.probes += 1
        self._probe_failed.discard(server)
        inserted = {r["datname"]: int(r["tup_inserted"]) for r in rows}
        for seat in seats:
            seat.idle_interval = IDLE_POLLS * self.poll_interval
            count = inserted.get(seat.dbname)
            if count is None:
                continue
            if seat.inserted is not None and count != seat.inserted:
                self.want(seat)
            seat.inserted = count


class LentPool(AsyncConnectionPool[Any]):
    """What a database's worker takes for its pool when connections are
    lent: a connection is that of the database's turn. Inside a turn, the
    worker's work gets the turn's connection; any other task waits for the
    database's next turn and runs in it. Only the pool API the worker uses
    is served (open, close, connection, getconn, putconn)."""

    def __init__(
        self,
        turns: TurnScheduler,
        conninfo: str,
        *,
        kwargs: dict[str, Any],
        configure: Configure,
        name: str,
        database: str,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(conninfo, min_size=0, max_size=1, open=False, name=name, timeout=timeout)
        self._turns = turns
        self._url = conninfo
        self._connect_kwargs = kwargs
        self._configure_lent = configure
        self._lent_closed = True
        self.seat = turns.seat(self, database, conninfo)

    async def connect(self) -> Conn:
        conn = await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs)
        try:
            await self._configure_lent(conn)
        except BaseException:
            await conn.close()
            raise
        conn._pool = self  # "async with conn" then leaves it open, as for a pool's
        return conn

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (the pool API)
        self._lent_closed = False

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the pool API)
        self._lent_closed = True
        self._turns.leave(self.seat)
        await self._turns.lender.forget(self)

    @property
    def closed(self) -> bool:
        return self._lent_closed

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109
        seat = self.seat
        if seat.conn is not None and seat.user is asyncio.current_task():
            seat.depth += 1  # the turn's own work, or a borrower, asking again
            return seat.conn
        return await self._turns.borrow(seat, self.timeout if timeout is None else timeout)

    async def putconn(self, conn: Conn) -> None:
        seat = self.seat
        seat.depth -= 1
        if seat.depth == 0:
            self._turns.returned(seat)
